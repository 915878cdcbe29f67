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
        "{model}: {} of {checks} id checks and {} of {n_chats} chat renderings match",
        checks - failures.len(),
        n_chats - chat_failures.len()
    );
    failures.extend(chat_failures);
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
