//! Tokenizers built from tiny synthetic GGUF vocabularies: Gemma 4 BPE (no real file exists
//! here), SPM with a prefix space, Llama 3 byte-level BPE, and metadata errors.

mod common;

use kestrel_gguf::{GgufFile, GgufWriter, MetaType, MetaValue};
use kestrel_tokenizer::{ChatMessage, StreamDecoder, Tokenizer, TokenizerError, TokenizerKind};

/// (text, token type, score)
type Entry = (String, i32, f32);

fn vocab_file(
    model: &str,
    entries: &[Entry],
    merges: &[&str],
    extra: &[(&str, MetaValue)],
) -> GgufFile {
    let mut w = GgufWriter::new();
    w.add_meta("general.architecture", "test");
    w.add_meta("tokenizer.ggml.model", model);
    let texts: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    w.add_str_array("tokenizer.ggml.tokens", &texts);
    w.add_meta(
        "tokenizer.ggml.token_type",
        MetaValue::Array(
            MetaType::I32,
            entries.iter().map(|e| MetaValue::I32(e.1)).collect(),
        ),
    );
    w.add_meta(
        "tokenizer.ggml.scores",
        MetaValue::Array(
            MetaType::F32,
            entries.iter().map(|e| MetaValue::F32(e.2)).collect(),
        ),
    );
    if !merges.is_empty() {
        w.add_str_array("tokenizer.ggml.merges", merges);
    }
    for (k, v) in extra {
        w.add_meta(k, v.clone());
    }
    GgufFile::from_bytes(w.to_bytes()).expect("synthetic GGUF parses")
}

fn push(v: &mut Vec<Entry>, text: &str, ty: i32, score: f32) -> u32 {
    v.push((text.to_string(), ty, score));
    (v.len() - 1) as u32
}

fn add_bytes(v: &mut Vec<Entry>) -> u32 {
    let first = v.len() as u32;
    for b in 0..=255u8 {
        push(v, &format!("<0x{b:02X}>"), 6, 0.0);
    }
    first
}

// ---------------------------------------------------------------- Gemma 4

struct G4 {
    tok: Tokenizer,
    first_byte: u32,
}

impl G4 {
    fn id(&self, s: &str) -> u32 {
        self.tok
            .token_id(s)
            .unwrap_or_else(|| panic!("{s:?} not in the vocab"))
    }
    fn ids(&self, pieces: &[&str]) -> Vec<u32> {
        pieces.iter().map(|p| self.id(p)).collect()
    }
    fn byte(&self, b: u8) -> u32 {
        self.first_byte + b as u32
    }
}

fn gemma4() -> G4 {
    let mut v = Vec::new();
    for (t, ty) in [
        ("<pad>", 3),
        ("<eos>", 3),
        ("<bos>", 3),
        ("<unk>", 2),
        ("<mask>", 3),
    ] {
        push(&mut v, t, ty, -1000.0);
    }
    push(&mut v, "<|turn>", 3, -1000.0);
    push(&mut v, "<turn|>", 3, -1000.0);
    push(&mut v, "<|\"|>", 4, 0.0);
    push(&mut v, "</s>", 4, 0.0);
    let first_byte = add_bytes(&mut v);
    for t in ["\n", "\n\n", "\n\n\n"] {
        push(&mut v, t, 1, 0.0);
    }
    for c in "▁abcdehlnorsuwLi日<>|".chars() {
        push(&mut v, &c.to_string(), 1, 0.0);
    }
    let merges = [
        "l l",
        "ll o",
        "h e",
        "he llo",
        "▁ w",
        "o r",
        "▁w or",
        "l d",
        "▁wor ld",
        "b c",
        "a b",
        "L i",
        "n u",
        "Li nu",
        "Linu s",
    ];
    for m in merges {
        push(&mut v, &m.replace(' ', ""), 1, 0.0);
    }
    let file = vocab_file(
        "gemma4",
        &v,
        &merges,
        &[
            ("tokenizer.ggml.bos_token_id", MetaValue::U32(2)),
            ("tokenizer.ggml.eos_token_id", MetaValue::U32(1)),
            ("tokenizer.ggml.unknown_token_id", MetaValue::U32(3)),
            ("tokenizer.ggml.padding_token_id", MetaValue::U32(0)),
            // llama.cpp forces BOS on for Gemma 4 whatever the file says.
            ("tokenizer.ggml.add_bos_token", MetaValue::Bool(false)),
            ("tokenizer.ggml.add_space_prefix", MetaValue::Bool(false)),
        ],
    );
    G4 {
        tok: Tokenizer::from_gguf(&file).expect("gemma4 tokenizer"),
        first_byte,
    }
}

#[test]
fn gemma4_merges_spaces_and_bos() {
    let g = gemma4();
    let t = &g.tok;
    assert_eq!(t.kind(), &TokenizerKind::Gemma4);
    assert!(t.add_bos());
    assert_eq!(
        t.encode("hello world", true, false),
        [vec![2], g.ids(&["hello", "▁world"])].concat()
    );
    assert_eq!(
        t.encode("hello world", false, false),
        g.ids(&["hello", "▁world"])
    );
    // No prefix space; a leading space is a '▁' symbol of its own here.
    assert_eq!(t.encode(" world", false, false), g.ids(&["▁world"]));
    assert_eq!(t.encode("  world", false, false), g.ids(&["▁", "▁world"]));
    // Lowest rank first, not leftmost first: "b c" (rank 9) beats "a b" (rank 10).
    assert_eq!(t.encode("abc", false, false), g.ids(&["a", "bc"]));
    assert_eq!(t.encode("ab", false, false), g.ids(&["ab"]));
    // A multi-step merge chain must complete ("Linus", cf. the merge-loop bug in §4.14).
    assert_eq!(t.encode("Linus", false, false), g.ids(&["Linus"]));
}

#[test]
fn gemma4_newlines_and_byte_fallback() {
    let g = gemma4();
    let t = &g.tok;
    assert_eq!(t.encode("a\nb", false, false), g.ids(&["a", "\n", "b"]));
    assert_eq!(
        t.encode("a\n\n\nb", false, false),
        g.ids(&["a", "\n\n\n", "b"])
    );
    // Four newlines are no token: the run is cut into tokens that exist, no bytes.
    let four = t.encode("\n\n\n\n", false, false);
    assert_eq!(t.decode(&four, false), "\n\n\n\n");
    assert!(
        four.iter()
            .all(|&id| !(g.first_byte..g.first_byte + 256).contains(&id)),
        "{four:?}"
    );
    // '日' is a token, '本' (E6 9C AC) and the emoji are not: bytes.
    assert_eq!(
        t.encode("日本", false, false),
        vec![g.id("日"), g.byte(0xE6), g.byte(0x9C), g.byte(0xAC)]
    );
    assert_eq!(
        t.encode("a🤖", false, false),
        vec![
            g.id("a"),
            g.byte(0xF0),
            g.byte(0x9F),
            g.byte(0xA4),
            g.byte(0x96)
        ]
    );
    // A space before an unknown character: '▁' stays a token of its own.
    assert_eq!(t.encode(" ?", false, false), vec![g.id("▁"), g.byte(b'?')]);
}

#[test]
fn gemma4_specials_eog_and_decode() {
    let g = gemma4();
    let t = &g.tok;
    let turn = g.id("<|turn>");
    let end = g.id("<turn|>");
    assert_eq!(
        t.encode("<|turn>hi<turn|>", true, true),
        vec![2, turn, g.id("h"), g.id("i"), end]
    );
    // Without parse_special control texts are plain text (characters / bytes) ...
    let plain = t.encode("<|turn>", false, false);
    assert!(!plain.contains(&turn));
    assert_eq!(t.decode(&plain, false), "<|turn>");
    // ... but user-defined tokens are always recognised.
    assert_eq!(
        t.encode("a<|\"|>b", false, false),
        g.ids(&["a", "<|\"|>", "b"])
    );
    assert!(t.is_eog(1) && t.is_eog(end));
    assert!(!t.is_eog(g.id("</s>")), "</s> is text for Gemma 4");
    assert_eq!(t.eog_ids(), vec![1, end]);
    // Decoding: '▁' is a space, control tokens only when asked.
    let ids = t.encode("hello world\n\n\n日本🤖", true, false);
    assert_eq!(t.decode(&ids, false), "hello world\n\n\n日本🤖");
    assert_eq!(t.decode(&ids, true), "<bos>hello world\n\n\n日本🤖");
    let mut d = StreamDecoder::new(t, false);
    let mut s: String = ids.iter().map(|&id| d.push(id)).collect();
    s.push_str(&d.finish());
    assert_eq!(s, "hello world\n\n\n日本🤖");
    assert_eq!(t.special_tokens().len(), 8); // control and user-defined; <unk> is neither
}

#[test]
fn gemma4_roundtrip_and_chat() {
    let g = gemma4();
    let t = &g.tok;
    for s in [
        "hello  world   ",
        "\t\r\n x \n\n\n\n\n",
        "Ünïcödé 🤖 日本語テキスト",
        "def f(x):\n    return x**2  # square",
    ] {
        assert_eq!(t.decode(&t.encode(s, true, false), false), s);
    }
    // No chat template in the file: the built-in Gemma 4 format, BOS left to the tokenizer.
    assert_eq!(t.chat_template(), None);
    let msgs = [
        ChatMessage::new("system", "Sys"),
        ChatMessage::new("user", "Hi"),
    ];
    let p = t.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(
        p,
        "<|turn>system\nSys<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"
    );
    let ids = t.encode(&p, true, true);
    assert_eq!(ids[..2], [2, g.id("<|turn>")]);
}

/// A template in the shape of the Gemma 4 ones shipped in GGUFs (written here, not copied):
/// a macro stripping `<|channel>…<channel|>` thoughts from model turns with `namespace` and
/// `split`, the system turn opened by `<|think|>` when thinking is on, `messages[1:]`, role
/// mapping, `is string`, and the 26B/31B-style empty thought channel after the generation prompt.
const GEMMA4_FILE_TEMPLATE: &str = r#"{%- macro strip_thinking(text) -%}
    {%- set ns = namespace(result='') -%}
    {%- for part in text.split('<channel|>') -%}
        {%- if '<|channel>' in part -%}{%- set ns.result = ns.result + part.split('<|channel>')[0] -%}
        {%- else -%}{%- set ns.result = ns.result + part -%}{%- endif -%}
    {%- endfor -%}
    {{- ns.result | trim -}}
{%- endmacro -%}
{%- set loop_messages = messages -%}
{{- bos_token -}}
{%- if (enable_thinking is defined and enable_thinking) or messages[0]['role'] in ['system', 'developer'] -%}
    {{- '<|turn>system\n' -}}
    {%- if enable_thinking is defined and enable_thinking -%}{{- '<|think|>\n' -}}{%- endif -%}
    {%- if messages[0]['role'] in ['system', 'developer'] -%}
        {{- messages[0]['content'] | trim -}}
        {%- set loop_messages = messages[1:] -%}
    {%- endif -%}
    {{- '<turn|>\n' -}}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{- '<|turn>' + role + '\n' -}}
    {%- if message['tool_calls'] -%}{{- '<|tool_call>' -}}{%- endif -%}
    {%- if message['content'] is string -%}
        {%- if role == 'model' -%}{{- strip_thinking(message['content']) -}}
        {%- else -%}{{- message['content'] | trim -}}{%- endif -%}
    {%- endif -%}
    {{- '<turn|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|turn>model\n' -}}
    {%- if not enable_thinking | default(false) -%}{{- '<|channel>thought\n<channel|>' -}}{%- endif -%}
{%- endif -%}"#;

#[test]
fn gemma4_chat_renders_the_files_template_and_stops_on_1_and_106() {
    // The real ids: <eos> 1, <bos> 2, <|channel> 100, <channel|> 101, <|turn> 105, <turn|> 106.
    let mut v = Vec::new();
    for (t, ty) in [
        ("<pad>", 3),
        ("<eos>", 3),
        ("<bos>", 3),
        ("<unk>", 2),
        ("<mask>", 3),
    ] {
        push(&mut v, t, ty, -1000.0);
    }
    while v.len() < 100 {
        let n = v.len();
        push(&mut v, &format!("<unused{n}>"), 3, -1000.0);
    }
    push(&mut v, "<|channel>", 4, 0.0);
    push(&mut v, "<channel|>", 4, 0.0);
    while v.len() < 105 {
        let n = v.len();
        push(&mut v, &format!("<unused{n}>"), 3, -1000.0);
    }
    assert_eq!(push(&mut v, "<|turn>", 3, -1000.0), 105);
    assert_eq!(push(&mut v, "<turn|>", 3, -1000.0), 106);
    push(&mut v, "</s>", 4, 0.0);
    add_bytes(&mut v);
    push(&mut v, "\n", 1, 0.0);
    for c in "▁abcdeghilmnorstuwyAHS".chars() {
        push(&mut v, &c.to_string(), 1, 0.0);
    }
    push(&mut v, "Hi", 1, 0.0);
    let file = vocab_file(
        "gemma4",
        &v,
        &["H i"],
        &[
            ("tokenizer.ggml.bos_token_id", MetaValue::U32(2)),
            ("tokenizer.ggml.eos_token_id", MetaValue::U32(1)),
            ("tokenizer.ggml.add_bos_token", MetaValue::Bool(true)),
            (
                "tokenizer.chat_template",
                MetaValue::Str(GEMMA4_FILE_TEMPLATE.into()),
            ),
        ],
    );
    let t = Tokenizer::from_gguf(&file).expect("gemma4 tokenizer");
    assert_eq!(t.chat_template(), Some(GEMMA4_FILE_TEMPLATE));
    assert_eq!(t.eog_ids(), vec![1, 106]);
    assert!(!t.is_eog(t.token_id("</s>").unwrap()) && !t.is_eog(105));
    let msgs = [
        ChatMessage::new("system", " Sys "),
        ChatMessage::new("user", " Hi "),
        ChatMessage::new("assistant", "<|channel>thought\nhmm<channel|>Hello"),
        ChatMessage::new("user", "Again"),
    ];
    // The file's template, not the built-in one (which has no thought channel); BOS is left
    // to the tokenizer.
    let p = t.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(
        p,
        "<|turn>system\nSys<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\nHello<turn|>\n\
         <|turn>user\nAgain<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
    );
    let ids = t.encode(&p, true, true);
    assert_eq!(ids[..2], [2, 105]);
    assert_eq!(ids.iter().filter(|&&i| i == 106).count(), 4);
    assert_eq!(ids[ids.len() - 2..], [t.token_id("\n").unwrap(), 101]);
}

// ---------------------------------------------------------------- SPM

fn spm(add_space_prefix: Option<bool>) -> Tokenizer {
    let mut v = Vec::new();
    push(&mut v, "<unk>", 2, 0.0);
    push(&mut v, "<s>", 3, 0.0);
    push(&mut v, "</s>", 3, 0.0);
    add_bytes(&mut v);
    for c in "▁aehlowrd".chars() {
        push(&mut v, &c.to_string(), 1, -10.0);
    }
    for (t, s) in [
        ("aa", -1.0),
        ("ll", -1.0),
        ("lo", -1.5),
        ("llo", -2.0),
        ("he", -3.0),
        ("▁h", -4.0),
    ] {
        push(&mut v, t, 1, s);
    }
    for (t, s) in [
        ("hello", -0.5),
        ("▁hello", -0.1),
        ("▁w", -5.0),
        ("or", -5.0),
        ("▁wor", -4.0),
        ("ld", -6.0),
    ] {
        push(&mut v, t, 1, s);
    }
    push(&mut v, "<tool>", 4, 0.0);
    let mut extra = vec![
        ("tokenizer.ggml.bos_token_id", MetaValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", MetaValue::U32(2)),
    ];
    if let Some(p) = add_space_prefix {
        extra.push(("tokenizer.ggml.add_space_prefix", MetaValue::Bool(p)));
    }
    Tokenizer::from_gguf(&vocab_file("llama", &v, &[], &extra)).expect("spm tokenizer")
}

#[test]
fn spm_scores_prefix_space_and_bytes() {
    let t = spm(None); // add_space_prefix defaults to true, add_bos to true
    let id = |s: &str| t.token_id(s).unwrap();
    assert!(t.add_bos());
    assert_eq!(t.encode("hello", true, false), vec![1, id("▁hello")]);
    // Empty text gets no prefix space.
    assert_eq!(t.encode("", true, false), vec![1]);
    assert_eq!(t.encode("", false, false), Vec::<u32>::new());
    // Highest score first, then leftmost among equal scores.
    assert_eq!(
        t.encode("aaa", false, false),
        vec![id("▁"), id("aa"), id("a")]
    );
    assert_eq!(t.encode("world", false, false), vec![id("▁wor"), id("ld")]);
    // 'é' is no token: UTF-8 bytes C3 A9.
    let e = t.encode("é", false, false);
    assert_eq!(e, vec![id("▁"), id("<0xC3>"), id("<0xA9>")]);
    // The prefix space is added at the start and after every special token.
    assert_eq!(t.encode("<s>hello", false, true), vec![1, id("▁hello")]);
    assert_eq!(
        t.encode("a<tool>a", false, false),
        vec![id("▁"), id("a"), id("<tool>"), id("▁"), id("a")]
    );
    // Decoding removes the prefix space once, at the start.
    for s in ["hello world", " hello", "aaa é", "  two", ""] {
        let ids = t.encode(s, true, false);
        assert_eq!(t.decode(&ids, false), s, "{ids:?}");
        let mut d = StreamDecoder::new(&t, false);
        let mut out: String = ids.iter().map(|&i| d.push(i)).collect();
        out.push_str(&d.finish());
        assert_eq!(out, s);
    }
    // Documented exception: a prefix space is inserted after special/user-defined tokens.
    assert_eq!(
        t.decode(&t.encode("a<tool>a", false, false), false),
        "a<tool> a"
    );
    assert_eq!(
        t.decode(&t.encode("<s>hello", false, true), true),
        "<s>hello"
    );
}

#[test]
fn spm_without_prefix_space_roundtrips() {
    let t = spm(Some(false));
    let id = |s: &str| t.token_id(s).unwrap();
    assert_eq!(t.encode("hello", true, false), vec![1, id("hello")]);
    assert_eq!(t.encode(" hello", false, false), vec![id("▁hello")]);
    for s in ["hello world", " hello", "a<tool>a", "  é  ", "x\ty\n"] {
        assert_eq!(t.decode(&t.encode(s, true, false), false), s);
    }
    // No chat template and no known turn tokens.
    let err = t
        .apply_chat_template(&[ChatMessage::new("user", "hi")], true)
        .unwrap_err();
    assert!(matches!(err, TokenizerError::NoChatTemplate), "{err}");
}

// ---------------------------------------------------------------- byte-level BPE

#[test]
fn llama3_bpe_ignore_merges_and_digits() {
    let mut v = Vec::new();
    for b in 0..=255u8 {
        push(
            &mut v,
            &kestrel_tokenizer::bpe::byte_to_char(b).to_string(),
            1,
            0.0,
        );
    }
    let merges = ["1 2", "12 3", "Ġ a", "Ġa b"];
    for m in merges {
        push(&mut v, &m.replace(' ', ""), 1, 0.0);
    }
    // Reachable only through ignore_merges (no merge makes it).
    push(&mut v, "Ġxyz", 1, 0.0);
    let bot = push(&mut v, "<|begin_of_text|>", 3, 0.0);
    let eot = push(&mut v, "<|eot_id|>", 3, 0.0);
    push(&mut v, "<|start_header_id|>", 3, 0.0);
    push(&mut v, "<|end_header_id|>", 3, 0.0);
    let file = vocab_file(
        "gpt2",
        &v,
        &merges,
        &[
            ("tokenizer.ggml.pre", MetaValue::Str("llama-bpe".into())),
            ("tokenizer.ggml.bos_token_id", MetaValue::U32(bot)),
            ("tokenizer.ggml.eos_token_id", MetaValue::U32(bot + 1)),
            ("tokenizer.ggml.add_bos_token", MetaValue::Bool(true)),
        ],
    );
    let t = Tokenizer::from_gguf(&file).unwrap();
    let id = |s: &str| t.token_id(s).unwrap();
    assert_eq!(
        t.kind(),
        &TokenizerKind::Bpe {
            pre: "llama-bpe".into()
        }
    );
    // Digits in groups of three: "12345" -> "123" "45".
    assert_eq!(
        t.encode("12345", true, false),
        vec![bot, id("123"), id("4"), id("5")]
    );
    assert_eq!(
        t.encode(" ab xyz", false, false),
        vec![id("Ġab"), id("Ġxyz")]
    );
    assert!(t.is_eog(eot));
    let p = t
        .apply_chat_template(&[ChatMessage::new("user", " hi ")], true)
        .unwrap();
    assert_eq!(
        p,
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    let s = "tabs\t\r\n  ünï 🤖 123456 <|eot_id|>";
    assert_eq!(t.decode(&t.encode(s, true, false), false), s);
}

// ---------------------------------------------------------------- errors

#[test]
fn metadata_errors_name_the_key() {
    let v = vec![("a".to_string(), 1, 0.0)];
    let err = Tokenizer::from_gguf(&vocab_file("bert", &v, &[], &[]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("\"bert\""), "{err}");

    let err = Tokenizer::from_gguf(&vocab_file("gpt2", &v, &[], &[]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");

    let err = Tokenizer::from_gguf(&vocab_file(
        "llama",
        &v,
        &[],
        &[("tokenizer.ggml.bos_token_id", MetaValue::U32(7))],
    ))
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("tokenizer.ggml.bos_token_id"),
        "{err}"
    );

    let mut w = GgufWriter::new();
    w.add_meta("tokenizer.ggml.model", "llama");
    let err = Tokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap())
        .err()
        .unwrap();
    assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");
}
