//! Token ids, prompts and chat renderings against llama.cpp's reference outputs
//! (`shared/testdata/*.json`), for every real model whose GGUF is present.

mod common;

use kestrel_tokenizer::ChatMessage;

fn check_model(model: &str) {
    let (Some(tok), Some(data)) = (common::load(model), common::reference(model)) else {
        return;
    };
    let mut failures = Vec::new();
    let mut checks = 0;
    let mut expect = |what: String, got: Vec<u32>, want: Vec<u32>| {
        checks += 1;
        if got != want {
            failures.push(format!("{what}\n   got  {got:?}\n   want {want:?}"));
        }
    };

    for e in data["tokenize"].as_array().expect("tokenize[]") {
        let text = e["text"].as_str().expect("text");
        expect(
            format!("tokenize {text:?} (add_special, parse_special)"),
            tok.encode(text, true, true),
            common::ids(&e["ids_with_special"]),
        );
        expect(
            format!("tokenize {text:?} (no add_special, parse_special)"),
            tok.encode(text, false, true),
            common::ids(&e["ids_no_bos_parse_special"]),
        );
    }
    for c in data["completions"].as_array().expect("completions[]") {
        let prompt = c["prompt"].as_str().expect("prompt");
        expect(
            format!("completion prompt {prompt:?}"),
            tok.encode(prompt, true, true),
            common::ids(&c["prompt_ids"]),
        );
    }
    // llama.cpp's generated text is the detokenization of the generated ids (EOG excluded).
    let mut text_failures = Vec::new();
    let gens: Vec<&serde_json::Value> = data["completions"]
        .as_array()
        .into_iter()
        .chain(data["chats"].as_array())
        .flatten()
        .collect();
    for c in &gens {
        let ids = common::ids(&c["generated_ids"]);
        let want = c["text"].as_str().expect("text");
        let got = tok.decode(&ids, false);
        let mut stream = kestrel_tokenizer::StreamDecoder::new(&tok, false);
        let mut streamed: String = ids.iter().map(|&id| stream.push(id)).collect();
        streamed.push_str(&stream.finish());
        if got != want || streamed != want {
            text_failures.push(format!(
                "decode {ids:?}\n   got  {got:?}\n   stream {streamed:?}\n   want {want:?}"
            ));
        }
    }
    let mut chat_failures = Vec::new();
    for c in data["chats"].as_array().expect("chats[]") {
        let messages: Vec<ChatMessage> = c["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let want = c["prompt"].as_str().expect("prompt");
        let got = tok
            .apply_chat_template(&messages, true)
            .expect("chat template renders");
        if got != want {
            chat_failures.push(format!(
                "chat {messages:?}\n   got  {got:?}\n   want {want:?}"
            ));
        }
        expect(
            format!("chat prompt {want:?}"),
            tok.encode(&got, true, true),
            common::ids(&c["prompt_ids"]),
        );
    }
    let n_chats = data["chats"].as_array().map_or(0, Vec::len);
    eprintln!(
        "{model}: {} of {checks} id checks, {} of {n_chats} chat renderings and {} of {} decoded generations match",
        checks - failures.len(),
        n_chats - chat_failures.len(),
        gens.len() - text_failures.len(),
        gens.len()
    );
    failures.extend(chat_failures);
    failures.extend(text_failures);
    assert!(
        failures.is_empty(),
        "{model}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn reference_gemma3_270m() {
    check_model("gemma3-270m");
}

#[test]
fn reference_qwen25_coder_05b() {
    check_model("qwen2.5-coder-0.5b");
}

#[test]
fn reference_qwen25_coder_15b() {
    check_model("qwen2.5-coder-1.5b");
}

#[test]
fn eog_and_specials_real_models() {
    if let Some(t) = common::load("gemma3-270m") {
        assert_eq!(t.eog_ids(), vec![1, 106]);
        assert_eq!(
            (t.bos_id(), t.eos_id(), t.add_bos()),
            (Some(2), Some(1), true)
        );
        assert_eq!(t.vocab_size(), 262144);
        assert_eq!(t.piece(105), Some("<start_of_turn>"));
        assert_eq!(t.token_bytes(107, false), b"\n");
        assert_eq!(t.token_bytes(1, false), b"");
        assert_eq!(t.token_bytes(1, true), b"<eos>");
        assert_eq!(t.token_bytes(t.token_id("<0xF0>").unwrap(), false), [0xF0]);
        let sp = t.special_tokens();
        assert!(
            sp.contains(&(106, "<end_of_turn>".to_string()))
                && sp.contains(&(138, "  ".to_string()))
        );
    }
    for model in ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"] {
        let Some(t) = common::load(model) else {
            continue;
        };
        // <|endoftext|>, <|im_end|> and llama.cpp's FIM/repo separators.
        assert_eq!(t.eog_ids(), vec![151643, 151645, 151662, 151663, 151664]);
        assert_eq!(
            (t.bos_id(), t.eos_id(), t.add_bos()),
            (Some(151643), Some(151645), false)
        );
        assert_eq!(
            t.kind(),
            &kestrel_tokenizer::TokenizerKind::Bpe {
                pre: "qwen2".into()
            }
        );
        assert_eq!(t.token_bytes(151644, false), b"");
        assert_eq!(
            t.decode(&[151644, 872, 198, 6023, 151645], true),
            "<|im_start|>user\nhi<|im_end|>"
        );
        assert!(t.chat_template().unwrap().contains("<|im_start|>"));
    }
}

/// gemma3-270m is a base model without tokenizer.chat_template: the built-in Gemma format.
#[test]
fn builtin_chat_template_gemma3() {
    let Some(t) = common::load("gemma3-270m") else {
        return;
    };
    assert_eq!(t.chat_template(), None);
    let msgs = [
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "Hi there"),
        ChatMessage::new("assistant", "Hello."),
        ChatMessage::new("user", "Bye"),
    ];
    let p = t.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(
        p,
        "<start_of_turn>user\nYou are terse.\n\nHi there<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
         <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
    let ids = t.encode(&p, true, true);
    assert_eq!(ids[..3], [2, 105, 2364]); // <bos> <start_of_turn> user
    assert_eq!(
        ids.iter().filter(|&&i| i == 2).count(),
        1,
        "exactly one BOS"
    );
    assert_eq!(ids.iter().filter(|&&i| i == 106).count(), 3);
    assert_eq!(ids[ids.len() - 3..], [105, 4368, 107]); // <start_of_turn> model \n
}

/// Reference data for a model this file does not list would go unchecked.
#[test]
fn every_reference_file_is_covered() {
    let Ok(dir) = std::fs::read_dir(common::testdata_dir()) else {
        eprintln!("SKIP: no testdata directory");
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".json") {
            assert!(
                common::MODELS.contains(&stem),
                "reference file {name} has no test"
            );
        }
    }
}
