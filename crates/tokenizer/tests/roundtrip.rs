//! decode(encode(s)) == s and streaming decoding, on every real model present.

mod common;

use kestrel_tokenizer::{StreamDecoder, Tokenizer};

/// Unicode, emoji (incl. ZWJ sequences and flags), CJK, whitespace runs, code.
pub const SAMPLES: &[&str] = &[
    "Hello world",
    " leading space",
    "trailing spaces   ",
    "many          spaces   between      words",
    "                                                                      (70 spaces before)",
    "\ttabs\t\tand\t\t\tmore\t",
    "windows\r\nline\r\n\r\nendings\r\n",
    "\n\n\nnewlines first\n\n\n\n\n\n\n\n\n\n",
    " \n \n\t\n  mixed   \t \r\n whitespace \u{a0}\u{2003}\u{3000}end",
    "Ünïcödé façade naïve résumé Ångström",
    "Ελληνικά, русский, עברית, العربية, हिन्दी, ไทย",
    "日本語テキストと中文文本，한국어 텍스트。",
    "emoji 🤖🦀🎉 skin 👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 keycap 1️⃣",
    "math ∀x∈ℝ: x² ≥ 0 ⇒ √(x²) = |x|, ∑ ∫ ∞",
    "combining e\u{301} a\u{308}\u{323} and zero\u{200b}width",
    "def f(x):\n    return x**2  # square\n",
    "fn main() {\n\tlet v: Vec<u32> = (0..10).map(|i| i * 2).collect();\n\tprintln!(\"{v:?}\");\n}\n",
    "<html><body class=\"a\">&amp; 'quoted' \"double\"</body></html>",
    "numbers 1234567890 3.14159 -42 1e-9 0xFF 1,000,000",
    "I'm we're they've you'll he'd SHE'S DON'T",
    "<|im_start|>user\nhi<|im_end|> <start_of_turn>model\n<end_of_turn> <bos> <eos>",
    "[INST] <<SYS>> special-looking text <</SYS>> [/INST] </s> <s>",
    "",
    " ",
    "\u{1F600}",
];

fn models() -> Vec<(&'static str, Tokenizer)> {
    common::MODELS
        .iter()
        .filter_map(|m| Some((*m, common::load(m)?)))
        .collect()
}

fn roundtrip(model: &str, tok: &Tokenizer) -> usize {
    let mut n = 0;
    for s in SAMPLES {
        // Without parse_special, control-token texts in the input are ordinary text.
        for add_special in [false, true] {
            let ids = tok.encode(s, add_special, false);
            assert_eq!(
                tok.decode(&ids, false),
                *s,
                "{model}: round trip of {s:?} (ids {ids:?})"
            );
            n += 1;
        }
        // Parsed specials render back to the same text when special rendering is on.
        let ids = tok.encode(s, false, true);
        assert_eq!(
            tok.decode(&ids, true),
            *s,
            "{model}: round trip of {s:?} with parse_special"
        );
        n += 1;
    }
    n
}

#[test]
fn roundtrip_real_models() {
    for (model, tok) in models() {
        let n = roundtrip(model, &tok);
        eprintln!("{model}: {n} round trips exact");
    }
}

/// Push ids one by one: the chunks concatenate to decode(all) and none holds half a char.
pub fn check_stream(tok: &Tokenizer, ids: &[u32], render_special: bool) -> usize {
    let mut dec = StreamDecoder::new(tok, render_special);
    let mut joined = String::new();
    let mut held_back = 0;
    for &id in ids {
        let chunk = dec.push(id);
        if !dec.pending_bytes().is_empty() {
            held_back += 1;
        }
        assert!(
            !chunk.contains('\u{FFFD}'),
            "stream emitted a replacement char for valid text: {chunk:?}"
        );
        joined.push_str(&chunk);
    }
    joined.push_str(&dec.finish());
    assert_eq!(joined, tok.decode(ids, render_special));
    held_back
}

#[test]
fn stream_decoder_real_models() {
    let text = "Streaming 🤖 rare 𓀀𓁹 𠜎𠜱𡿺 🫨🪿 ꙮ emoji 👨‍👩‍👧‍👦 and CJK 日本語テキスト 漢字 ɐ̃ 🇯🇵 ok.";
    for (model, tok) in models() {
        let ids = tok.encode(text, true, false);
        let held = check_stream(&tok, &ids, false);
        assert_eq!(tok.decode(&ids, false), text);
        // Every model here splits some of these characters over several byte tokens.
        assert!(
            held > 0,
            "{model}: no token left an incomplete character pending; the test text is too easy"
        );
        check_stream(&tok, &ids, true);
        for s in SAMPLES {
            check_stream(&tok, &tok.encode(s, true, true), true);
        }
        eprintln!("{model}: stream decoding matches decode ({held} pushes held bytes back)");
    }
}

/// Invalid UTF-8 from byte tokens becomes U+FFFD in decode and in the stream alike.
#[test]
fn stream_decoder_invalid_utf8() {
    for (model, tok) in models() {
        // Tokens for bytes 0xE6 0x97 (two thirds of a CJK char), then 'a', then a lone 0xF0.
        let byte_ids: Vec<Vec<u32>> = [0xE6u8, 0x97, 0xF0]
            .iter()
            .map(|&b| single_byte_ids(&tok, b))
            .collect();
        let a = tok.encode("a", false, false);
        let mut ids = byte_ids[0].clone();
        ids.extend(&byte_ids[1]);
        ids.extend(&a);
        ids.extend(&byte_ids[2]);
        let mut dec = StreamDecoder::new(&tok, false);
        let mut joined: String = ids.iter().map(|&id| dec.push(id)).collect();
        joined.push_str(&dec.finish());
        assert_eq!(joined, tok.decode(&ids, false), "{model}");
        assert_eq!(joined, "\u{FFFD}a\u{FFFD}", "{model}");
    }
}

/// The token(s) that decode to exactly one byte `b`.
fn single_byte_ids(tok: &Tokenizer, b: u8) -> Vec<u32> {
    let id = (0..tok.vocab_size() as u32)
        .find(|&id| tok.token_bytes(id, false) == [b])
        .expect("a token for every byte");
    vec![id]
}
