//! End-to-end tests of the `kestrel` binary on the real models (skipped, with a message, when a
//! model is not in the model home) and on broken files. No network: models are passed by path.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn kestrel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(args)
        .output()
        .expect("run kestrel")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The cached file of a registry model, honouring $KESTREL_HOME; `None` (and a note) if absent.
fn model(name: &str) -> Option<PathBuf> {
    let home = match std::env::var_os("KESTREL_HOME").filter(|h| !h.is_empty()) {
        Some(k) => PathBuf::from(k),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/kestrel"),
    };
    let path = home.join("models").join(format!("{name}.gguf"));
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipping: {} not found (run `kestrel pull {name}`)",
            path.display()
        );
        None
    }
}

fn testdata(name: &str) -> Option<Value> {
    let dir = match std::env::var_os("KESTREL_TESTDATA") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"),
    };
    let path = dir.join(format!("{name}.json"));
    match std::fs::read_to_string(&path) {
        Ok(s) => Some(serde_json::from_str(&s).expect("testdata is JSON")),
        Err(_) => {
            eprintln!("skipping: {} not found", path.display());
            None
        }
    }
}

fn inspect_json(path: &std::path::Path) -> Value {
    let o = kestrel(&["inspect", "--json", path.to_str().unwrap()]);
    assert!(o.status.success(), "inspect --json failed: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).expect("inspect --json prints valid JSON")
}

fn tensor_types(j: &Value) -> Vec<String> {
    let mut v: Vec<String> = j["tensor_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn inspect_gemma3_270m() {
    let Some(path) = model("gemma3-270m") else {
        return;
    };
    let o = kestrel(&["inspect", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "architecture         gemma3",
        "layers               18",
        "d_model              640",
        "sliding window       512",
        "tensors: 236",
        "kind                 spm",
        "vocabulary           262,144",
        "chat template        absent",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    let j = inspect_json(&path);
    assert_eq!(j["architecture"], "gemma3");
    assert_eq!(j["file_size"], 253_113_024u64);
    assert_eq!(j["gguf_version"], 3);
    assert_eq!(j["tensor_count"], 236);
    let hp = &j["hyperparameters"];
    assert_eq!(hp["block_count"], 18);
    assert_eq!(hp["embedding_length"], 640);
    assert_eq!(hp["attention.sliding_window"], 512);
    assert_eq!(hp["attention.head_count"], 4);
    assert_eq!(hp["attention.head_count_kv"], 1);
    assert_eq!(hp["head_dim"], 256);
    assert_eq!(
        tensor_types(&j),
        sorted(&["Q5_0", "Q4_K", "Q8_0", "Q6_K", "F32"])
    );
    let tk = &j["tokenizer"];
    assert_eq!(tk["kind"], "spm", "{tk}");
    assert_eq!(tk["vocab_size"], 262_144);
    assert_eq!(tk["bos"]["id"], 2);
    assert_eq!(tk["bos"]["text"], "<bos>");
    assert_eq!(tk["add_bos"], true);
    assert_eq!(tk["chat_template"], false);
    let eog: Vec<u64> = tk["eog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert!(eog.contains(&1), "eog {eog:?} lacks <eos>");
}

fn check_qwen(name: &str, layers: u64, d_model: u64, heads: u64, head_dim: u64, types: &[&str]) {
    let Some(path) = model(name) else {
        return;
    };
    let o = kestrel(&["inspect", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "architecture         qwen2".to_string(),
        format!("layers               {layers}"),
        format!("d_model              {d_model}"),
        "kind                 bpe (pre qwen2)".to_string(),
        "chat template        present".to_string(),
    ] {
        assert!(text.contains(&needle), "missing {needle:?} in:\n{text}");
    }

    let j = inspect_json(&path);
    assert_eq!(j["architecture"], "qwen2");
    let hp = &j["hyperparameters"];
    assert_eq!(hp["block_count"], layers);
    assert_eq!(hp["embedding_length"], d_model);
    assert_eq!(hp["attention.head_count"], heads);
    assert_eq!(hp["attention.head_count_kv"], 2);
    assert_eq!(hp["head_dim"], head_dim);
    assert_eq!(tensor_types(&j), sorted(types));
    let tk = &j["tokenizer"];
    assert_eq!(tk["kind"], "bpe", "{tk}");
    assert_eq!(tk["pre"], "qwen2");
    assert_eq!(tk["chat_template"], true);
    let eog: Vec<&str> = tk["eog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert!(eog.contains(&"<|im_end|>"), "eog {eog:?}");
}

#[test]
fn inspect_qwen_0_5b() {
    check_qwen(
        "qwen2.5-coder-0.5b",
        24,
        896,
        14,
        64,
        &["Q5_0", "Q8_0", "Q6_K", "Q4_K", "F32"],
    );
}

#[test]
fn inspect_qwen_1_5b() {
    check_qwen(
        "qwen2.5-coder-1.5b",
        28,
        1536,
        12,
        128,
        &["Q4_K", "Q6_K", "F32"],
    );
}

#[test]
fn tokenize_hello_world_matches_llama_cpp() {
    for name in ["gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"] {
        let (Some(path), Some(data)) = (model(name), testdata(name)) else {
            continue;
        };
        let case = data["tokenize"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["text"] == "Hello world")
            .expect("a Hello world case");
        let ids = |v: &Value| -> String {
            let v: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.to_string())
                .collect();
            format!("[{}]", v.join(", "))
        };
        let p = path.to_str().unwrap();
        let o = kestrel(&["tokenize", "-m", p, "--ids-only", "Hello world"]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert_eq!(stdout(&o).trim(), ids(&case["ids_with_special"]), "{name}");

        let o = kestrel(&["tokenize", "-m", p, "--ids-only", "--no-bos", "Hello world"]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert_eq!(
            stdout(&o).trim(),
            ids(&case["ids_no_bos_parse_special"]),
            "{name}"
        );

        // Default format: one `id -> 'piece'` line per token.
        let o = kestrel(&["tokenize", "-m", p, "Hello world"]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let text = stdout(&o);
        let n = case["ids_with_special"].as_array().unwrap().len();
        assert_eq!(text.lines().count(), n, "{name}: {text}");
        assert!(text.contains(" -> ' world'"), "{name}: {text}");
    }
}

/// A copy of the first `len` bytes of a real model.
fn truncated_copy(src: &std::path::Path, len: u64, tag: &str) -> PathBuf {
    let dst = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("truncated-{tag}.gguf"));
    let mut r = std::fs::File::open(src).unwrap().take(len);
    let mut w = std::fs::File::create(&dst).unwrap();
    std::io::copy(&mut r, &mut w).unwrap();
    w.flush().unwrap();
    dst
}

fn assert_clean_failure(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in: {err}");
    }
}

#[test]
fn truncated_gguf_fails_with_a_clear_message() {
    let Some(src) = model("gemma3-270m").or_else(|| model("qwen2.5-coder-0.5b")) else {
        return;
    };
    // Cut inside the metadata (the vocabulary alone is megabytes): the error names the key.
    let head = truncated_copy(&src, 1 << 20, "head");
    for cmd in ["inspect", "tokenize"] {
        let p = head.to_str().unwrap();
        let args: Vec<&str> = if cmd == "inspect" {
            vec![cmd, p]
        } else {
            vec![cmd, "-m", p, "hi"]
        };
        let o = kestrel(&args);
        assert_clean_failure(&o, &["truncated", "tokenizer.ggml", p]);
    }

    // Cut inside the tensor data: the error names a tensor that runs past the end.
    let len = std::fs::metadata(&src).unwrap().len();
    let half = truncated_copy(&src, len / 2, "half");
    let o = kestrel(&["inspect", half.to_str().unwrap()]);
    assert_clean_failure(&o, &["invalid tensor", "runs past the end", "truncated"]);
    let _ = std::fs::remove_file(head);
    let _ = std::fs::remove_file(half);
}

#[test]
fn not_a_gguf_file() {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("not-a-model.gguf");
    std::fs::write(&p, b"this is not a model, just text").unwrap();
    let o = kestrel(&["inspect", p.to_str().unwrap()]);
    assert_clean_failure(&o, &["not a GGUF file"]);
}

#[test]
fn unknown_model_lists_known_names() {
    let o = kestrel(&["inspect", "llama-9000"]);
    assert_clean_failure(
        &o,
        &[
            "llama-9000",
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-1.5b",
            "gemma3-270m",
        ],
    );
    let o = kestrel(&["tokenize", "-m", "llama-9000", "hi"]);
    assert_clean_failure(&o, &["gemma3-270m"]);
    let o = kestrel(&["pull", "llama-9000"]);
    assert_clean_failure(&o, &["gemma3-270m"]);
}

#[test]
fn missing_file_is_reported() {
    let o = kestrel(&["inspect", "/no/such/dir/model.gguf"]);
    assert_clean_failure(&o, &["/no/such/dir/model.gguf", "does not exist"]);
}

#[test]
fn pull_list_shows_the_registry() {
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("empty-kestrel-home");
    let o = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(["pull", "--list"])
        .env("KESTREL_HOME", &home)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains(&home.join("models").display().to_string()),
        "{text}"
    );
    for n in ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "gemma3-270m"] {
        assert!(text.contains(n), "{text}");
    }
    assert!(text.contains("(default)"));
    assert!(!text.contains("downloaded"), "{text}");
}

/// `kestrel bench --json` reports every requested test, batched decode included, with
/// positive finite rates (speed itself is measured, not asserted).
#[test]
fn bench_reports_single_and_batched_tests() {
    let Some(path) = model("qwen2.5-coder-0.5b") else {
        return;
    };
    let o = kestrel(&[
        "bench",
        "-m",
        path.to_str().unwrap(),
        "--device",
        "cpu",
        "-p",
        "16",
        "-n",
        "4",
        "-b",
        "1,3",
        "--batch-prompt",
        "8",
        "--batch-gen",
        "4",
        "-r",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let tests: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["test"].as_str().unwrap())
        .collect();
    assert_eq!(tests, ["pp16", "tg4", "B1 pp8+tg4", "B3 pp8+tg4"]);
    for r in rows.as_array().unwrap() {
        let tps = r["tps_mean"].as_f64().unwrap();
        assert!(tps.is_finite() && tps > 0.0, "{r}");
    }
}
