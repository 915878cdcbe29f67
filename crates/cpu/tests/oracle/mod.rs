//! Whole-model checks against the Hugging Face oracle of `tools/gemma_oracle.py`: tiny random
//! Gemma 3 / Gemma 4 models (fixtures in `crates/model/tests/fixtures/`), their logits at every
//! position of a prompt and its greedy continuation. Shared by the CPU test
//! (`tests/gemma_oracle.rs`) and the CUDA one (`cuda/tests/gemma_oracle.rs`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use kestrel_engine::{Backend, BatchEntry, Engine, EngineConfig};
use kestrel_gguf::GgufFile;
use serde_json::Value;

/// The model crate's fixtures: beside this crate where it was built, else (a test binary
/// carried to the GPU machine and run from a copy of the repository) from the working directory.
pub fn fixtures() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures");
    if built.is_dir() {
        built
    } else {
        PathBuf::from("crates/model/tests/fixtures")
    }
}

/// One GGUF file of a model and what the oracle computed on exactly its weights.
pub struct OracleFile {
    pub model: String,
    /// "f32" or "q8_0"
    pub kind: String,
    pub path: PathBuf,
    pub prompt: Vec<u32>,
    /// Prompt plus greedy continuation.
    pub tokens: Vec<u32>,
    /// `logits[i]`: after `tokens[..=i]`.
    pub logits: Vec<Vec<f32>>,
}

pub fn oracle_files() -> Vec<OracleFile> {
    let text =
        std::fs::read_to_string(fixtures().join("gemma_oracle.json")).expect("gemma_oracle.json");
    let doc: Value = serde_json::from_str(&text).expect("oracle JSON");
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mut out = Vec::new();
    for m in doc["models"].as_array().expect("models") {
        for (kind, f) in m["files"].as_object().expect("files") {
            out.push(OracleFile {
                model: m["name"].as_str().unwrap().to_string(),
                kind: kind.clone(),
                path: fixtures().join(f["gguf"].as_str().unwrap()),
                prompt: ids(&m["prompt"]),
                tokens: ids(&f["tokens"]),
                logits: f["logits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        r.as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_f64().unwrap() as f32)
                            .collect()
                    })
                    .collect(),
            });
        }
    }
    out
}

pub struct Run {
    pub tokens: Vec<u32>,
    pub logits: Vec<Vec<f32>>,
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// The prompt in two steps (so later tokens read K/V written by an earlier step, shared layers
/// included), logits for every row, then greedy decoding one token per step until `n_total`
/// tokens.
pub fn run<B: Backend>(backend: B, file: &Arc<GgufFile>, prompt: &[u32], n_total: usize) -> Run {
    let spec = kestrel_model::spec_from_gguf(file).expect("spec");
    let cfg = EngineConfig {
        n_ctx: 64,
        kv_tokens: 64,
    };
    let mut e = Engine::load(backend, spec, file, cfg, &mut |_, _| {}).expect("engine");
    let seq = e.new_seq();
    let entries = |toks: &[u32]| -> Vec<BatchEntry> {
        toks.iter()
            .map(|&token| BatchEntry::decode(seq, token))
            .collect()
    };
    let split = prompt.len() / 2;
    let mut logits = e.step(&entries(&prompt[..split])).expect("step");
    logits.extend(e.step(&entries(&prompt[split..])).expect("step"));
    let mut tokens = prompt.to_vec();
    while tokens.len() < n_total {
        let next = argmax(logits.last().unwrap());
        tokens.push(next);
        if tokens.len() < n_total {
            logits.extend(e.step(&entries(&[next])).expect("step"));
        }
    }
    Run { tokens, logits }
}

/// Largest |got - want| over every logit of every row.
pub fn max_abs_err(got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    assert_eq!(got.len(), want.len(), "row count");
    got.iter()
        .zip(want)
        .flat_map(|(g, w)| {
            assert_eq!(g.len(), w.len(), "vocab");
            g.iter().zip(w).map(|(a, b)| (a - b).abs())
        })
        .fold(0.0, f32::max)
}

/// Run every oracle file on `backend()` and check logits within `tol(model, kind)` (max abs) and the
/// greedy tokens equal. Prints each measured error.
pub fn check_all<B: Backend>(backend: impl Fn() -> B, tol: impl Fn(&str, &str) -> f32) {
    let mut failures = Vec::new();
    for o in oracle_files() {
        let file = Arc::new(GgufFile::open(&o.path).expect("fixture"));
        let r = run(backend(), &file, &o.prompt, o.tokens.len());
        let err = max_abs_err(&r.logits, &o.logits);
        let t = tol(&o.model, &o.kind);
        println!(
            "{} {}: max abs logit error {err:.3e} (tolerance {t:.0e}); tokens {:?}",
            o.model,
            o.kind,
            &r.tokens[o.prompt.len()..]
        );
        if err > t || !err.is_finite() {
            failures.push(format!(
                "{} {}: max abs logit error {err:.3e} > {t:.0e}",
                o.model, o.kind
            ));
        }
        if r.tokens != o.tokens {
            failures.push(format!(
                "{} {}: greedy tokens {:?}, oracle {:?}",
                o.model, o.kind, r.tokens, o.tokens
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
