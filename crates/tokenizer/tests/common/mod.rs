//! Shared test helpers: where the real models and the reference data live.
#![allow(dead_code)]

use std::path::PathBuf;

use kestrel_gguf::GgufFile;
use kestrel_tokenizer::Tokenizer;

/// The real models used by the tests (file stem under the models directory).
pub const MODELS: &[&str] = &["gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"];

/// `$KESTREL_HOME/models`, else `~/.cache/kestrel/models`.
pub fn models_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("KESTREL_HOME") {
        return PathBuf::from(home).join("models");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/kestrel/models")
}

/// `$KESTREL_TESTDATA`, else `shared/testdata` beside the checkout.
pub fn testdata_dir() -> PathBuf {
    match std::env::var_os("KESTREL_TESTDATA") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"),
    }
}

/// The tokenizer of a real model, or `None` (with a message) when its GGUF is absent.
pub fn load(model: &str) -> Option<Tokenizer> {
    let path = models_dir().join(format!("{model}.gguf"));
    if !path.exists() {
        eprintln!("SKIP {model}: {} not found", path.display());
        return None;
    }
    let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(Tokenizer::from_gguf(&f).unwrap_or_else(|e| panic!("{model}: {e}")))
}

/// The reference JSON of a model, or `None` (with a message) when absent.
pub fn reference(model: &str) -> Option<serde_json::Value> {
    let path = testdata_dir().join(format!("{model}.json"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("SKIP {model}: no reference data at {}", path.display());
        return None;
    };
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}
