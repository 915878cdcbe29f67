//! Whole models against llama.cpp's reference outputs (shared/testdata): greedy tokens must be
//! identical, except past a step where the reference's top two candidates are within `tie` of
//! each other (a near tie that rounding may break either way); top-5 probabilities must agree
//! within `prob_tol` absolute at every compared step.
//!
//! The bounds are tie 0.005 and prob 0.02. llama.cpp rebuilt from the references' exact ggml
//! version (0.25.3) and run on our 2-core machines reproduces qwen2.5-coder-0.5b's reference exactly,
//! but not the other two: it differs from its own reference by up to 0.061 (1.5b, which also
//! changes token where the top two are 0.051 apart) and 0.058 (gemma3-270m, at a 0.0023 tie) —
//! those references came from a CPU whose kernels round differently (llama.cpp repacks Q4_K
//! differently per instruction set). So:
//! - against `shared/testdata`: 0.5b under the bounds, the other two under bounds just above
//!   llama.cpp's own deviation (we measure 0.053 on gemma3-270m, a token change at a 0.016 tie);
//! - against `tests/fixtures/llamacpp-local/` (the same prompts through that llama.cpp build on this
//!   machine, recorded by the lead): both Qwen models under the bounds. Our arithmetic equals
//!   llama.cpp's on every intermediate of gemma3-270m too, but llama-server evaluates a
//!   sliding-window model's prompt in two batches (the last 4 tokens apart, so it can checkpoint the
//!   SWA cache; `--swa-full` turns that off) where `kestrel run` evaluates one, and llama.cpp's
//!   kernels round by batch size: we measure 0.0434 there (a token change at a 0.0032 tie);
//! - against `tests/fixtures/llamacpp-local/swa-full/` (gemma3-270m through the same server with
//!   `--swa-full`, one batch as here): every token equal, top-5 probabilities within 0.00026 — the
//!   rest is llama-server's softmax, which sums 262144 `expf` terms in f32.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The bounds.
const STRICT: Bounds = Bounds {
    tie: 0.005,
    prob_tol: 0.02,
};

#[derive(Clone, Copy)]
struct Bounds {
    tie: f64,
    prob_tol: f64,
}

fn local_fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llamacpp-local")
}

fn testdata_dir() -> PathBuf {
    std::env::var_os("KESTREL_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata")
        })
}

fn model_path(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("KESTREL_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/kestrel")
        });
    let p = home.join("models").join(format!("{name}.gguf"));
    p.exists().then_some(p)
}

fn run_json(model: &PathBuf, prompt: &str, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(["run", "-m"])
        .arg(model)
        .args(["-p", prompt, "--json", "--ctx", "512"])
        .args(extra)
        .output()
        .expect("run kestrel");
    assert!(
        out.status.success(),
        "kestrel run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id"))
        .collect()
}

/// Compare one completion; returns the step where a near tie ended the comparison, if any.
fn check_case(model: &str, path: &PathBuf, case: &Value, b: Bounds) -> Option<usize> {
    let prompt = case["prompt"].as_str().expect("prompt");
    let got = run_json(
        path,
        prompt,
        &["--temp", "0", "-n", "32", "--top-logprobs", "5"],
    );
    assert_eq!(
        ids(&got["prompt_ids"]),
        ids(&case["prompt_ids"]),
        "{model}: prompt ids for {prompt:?}"
    );
    let ref_steps = case["steps"].as_array().expect("steps");
    let got_steps = got["steps"].as_array().expect("steps");
    let mut tie_at = None;
    for (i, rs) in ref_steps.iter().enumerate() {
        let top = rs["top5"].as_array().expect("top5");
        let p = |k: usize| top.get(k).and_then(|c| c["prob"].as_f64()).unwrap_or(0.0);
        let gs = got_steps.get(i).unwrap_or_else(|| {
            panic!(
                "{model} {prompt:?}: stopped after {i} steps, reference has {}",
                ref_steps.len()
            )
        });
        let ours: Vec<(u64, f64)> = gs["top"]
            .as_array()
            .expect("top")
            .iter()
            .map(|c| (c["id"].as_u64().unwrap(), c["prob"].as_f64().unwrap()))
            .collect();
        let our_fifth = ours.last().map_or(0.0, |c| c.1);
        for c in top {
            let (id, rp) = (c["id"].as_u64().unwrap(), c["prob"].as_f64().unwrap());
            let op = ours.iter().find(|o| o.0 == id).map(|o| o.1);
            match op {
                Some(op) => assert!(
                    (op - rp).abs() <= b.prob_tol,
                    "{model} {prompt:?} step {i}: token {id} prob {op:.4} vs reference {rp:.4}"
                ),
                None => assert!(
                    rp <= our_fifth + b.prob_tol,
                    "{model} {prompt:?} step {i}: reference candidate {id} ({rp:.4}) missing from our top 5"
                ),
            }
        }
        let want = rs["token"].as_u64().unwrap();
        let have = gs["token"].as_u64().unwrap();
        if have != want {
            assert!(
                p(0) - p(1) <= b.tie,
                "{model} {prompt:?} step {i}: generated {have}, reference {want} (top probs {:.4} / {:.4})",
                p(0),
                p(1)
            );
            tie_at = Some(i);
            break;
        }
    }
    if tie_at.is_none() {
        // All steps agreed: the text and the stop reason must too.
        let mut want = ids(&case["generated_ids"]);
        if case["stop_type"] == "eos" {
            want.pop();
            assert_eq!(got["finish_reason"], "stop", "{model} {prompt:?}");
        }
        assert_eq!(ids(&got["generated_ids"]), want, "{model} {prompt:?}");
        assert_eq!(
            got["text"].as_str(),
            case["text"].as_str(),
            "{model} {prompt:?}"
        );
    }
    tie_at
}

fn check_model(name: &str, b: Bounds) {
    check_model_against(name, &testdata_dir(), b)
}

fn check_model_against(name: &str, dir: &std::path::Path, b: Bounds) {
    let Some(path) = model_path(name) else {
        eprintln!("skipping {name}: model not found (run `kestrel pull {name}`)");
        return;
    };
    let data: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{name}.json"))).expect("testdata"),
    )
    .expect("json");
    let cases = data["completions"]
        .as_array()
        .unwrap()
        .iter()
        .chain(data["chats"].as_array().unwrap());
    for case in cases {
        if let Some(i) = check_case(name, &path, case, b) {
            eprintln!(
                "{name} {:?}: near tie at step {i}; compared up to there",
                case["prompt"].as_str().unwrap()
            );
        }
    }
}

#[test]
fn qwen2_5_coder_0_5b_matches_llama_cpp() {
    check_model("qwen2.5-coder-0.5b", STRICT);
}

#[test]
fn qwen2_5_coder_1_5b_matches_llama_cpp() {
    check_model(
        "qwen2.5-coder-1.5b",
        Bounds {
            tie: 0.06,
            prob_tol: 0.08,
        },
    );
}

#[test]
fn qwen_models_match_llama_cpp_run_here() {
    for m in ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"] {
        check_model_against(m, &local_fixtures_dir(), STRICT);
    }
}

/// Measured 0.0434 (a token change at a 0.0032 tie): the prompt-split difference of the module
/// docs. Bound 0.05, 15% over.
#[test]
fn gemma3_270m_matches_llama_cpp_run_here() {
    check_model_against(
        "gemma3-270m",
        &local_fixtures_dir(),
        Bounds {
            tie: 0.005,
            prob_tol: 0.05,
        },
    );
}

/// The prompt as one batch on both sides: measured 0.00026 (llama-server's f32 softmax sum),
/// bound 0.001.
#[test]
fn gemma3_270m_matches_llama_cpp_run_here_one_batch() {
    check_model_against(
        "gemma3-270m",
        &local_fixtures_dir().join("swa-full"),
        Bounds {
            tie: 0.005,
            prob_tol: 0.001,
        },
    );
}

#[test]
fn gemma3_270m_matches_llama_cpp() {
    check_model(
        "gemma3-270m",
        Bounds {
            tie: 0.02,
            prob_tol: 0.08,
        },
    );
}

#[test]
fn same_seed_same_sample() {
    let Some(path) = model_path("qwen2.5-coder-0.5b") else {
        eprintln!("skipping: default model not found");
        return;
    };
    let args = ["--temp", "1.0", "--seed", "1234", "-n", "24"];
    let a = run_json(&path, "Once upon a time,", &args);
    let b = run_json(&path, "Once upon a time,", &args);
    assert_eq!(a["generated_ids"], b["generated_ids"]);
    let c = run_json(
        &path,
        "Once upon a time,",
        &["--temp", "1.0", "--seed", "99", "-n", "24"],
    );
    assert_ne!(
        a["generated_ids"], c["generated_ids"],
        "a different seed should sample differently"
    );
}
