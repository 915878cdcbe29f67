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

/// Greedy, 32 tokens, the top 5 candidates of each step: what the references hold.
const GREEDY: &[&str] = &["--temp", "0", "-n", "32", "--top-logprobs", "5"];

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

/// The binary under test: the one Cargo built, or `KESTREL_BIN` where this test binary was carried
/// to another machine (the GPU runs) without its target folder.
fn kestrel_bin() -> PathBuf {
    std::env::var_os("KESTREL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kestrel")))
}

fn run_json(model: &PathBuf, prompt: &str, extra: &[&str]) -> Value {
    let out = Command::new(kestrel_bin())
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
fn check_case(
    model: &str,
    path: &PathBuf,
    case: &Value,
    b: Bounds,
    device: &[&str],
) -> Option<usize> {
    let prompt = case["prompt"].as_str().expect("prompt");
    let got = run_json(path, prompt, &[GREEDY, device].concat());
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

/// The model's file, or None (the test is skipped with a note) when it is not installed, unless
/// `KESTREL_REQUIRE_MODELS=1` says a missing model is a failure (the GPU runs, where models are
/// carried by hand).
fn model_or_skip(name: &str) -> Option<PathBuf> {
    let path = model_path(name);
    if path.is_none() {
        assert!(
            std::env::var_os("KESTREL_REQUIRE_MODELS").is_none(),
            "{name}: model not found and KESTREL_REQUIRE_MODELS is set"
        );
        eprintln!("skipping {name}: model not found (run `kestrel pull {name}`)");
    }
    path
}

/// The fixture cases (completions, then chats) of one model in one reference folder.
fn cases(name: &str, dir: &std::path::Path) -> Vec<Value> {
    let data: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{name}.json"))).expect("testdata"),
    )
    .expect("json");
    let mut all = data["completions"].as_array().unwrap().clone();
    all.extend(data["chats"].as_array().unwrap().iter().cloned());
    all
}

fn check_model_against(name: &str, dir: &std::path::Path, b: Bounds) {
    check_model_on(name, dir, b, &[])
}

fn check_model_on(name: &str, dir: &std::path::Path, b: Bounds, device: &[&str]) {
    let Some(path) = model_or_skip(name) else {
        return;
    };
    for case in cases(name, dir) {
        if let Some(i) = check_case(name, &path, &case, b, device) {
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

// On the GPU (`#[ignore]`d here; run on the GPU machine with the models carried there, the test
// binary pointed at a carried `kestrel` by KESTREL_BIN and at the references by KESTREL_TESTDATA).

/// How run `b` differs from run `a` of the same prompt: the top-5 probability difference at the
/// first step (the prompt's last-token logits) and the largest over the steps they share, and
/// where their greedy tokens part, with `a`'s top-two gap there.
struct RunDiff {
    first: f64,
    max: f64,
    parted: Option<(usize, f64)>,
}

/// A step's candidates, from a `kestrel run --json` step (`top`) or a reference step (`top5`).
fn candidates(step: &Value) -> Vec<(u64, f64)> {
    step.get("top")
        .or_else(|| step.get("top5"))
        .and_then(Value::as_array)
        .expect("candidates")
        .iter()
        .map(|c| (c["id"].as_u64().unwrap(), c["prob"].as_f64().unwrap()))
        .collect()
}

fn diff_runs(a: &Value, b: &Value) -> RunDiff {
    let (sa, sb) = (
        a["steps"].as_array().unwrap(),
        b["steps"].as_array().unwrap(),
    );
    let mut d = RunDiff {
        first: 0.0,
        max: 0.0,
        parted: None,
    };
    for (i, (x, y)) in sa.iter().zip(sb).enumerate() {
        let (tx, ty) = (candidates(x), candidates(y));
        let fifth = ty.last().map_or(0.0, |c| c.1);
        for &(id, p) in &tx {
            // A candidate missing from `b`'s top 5 has at most `b`'s fifth probability.
            let e = match ty.iter().find(|c| c.0 == id) {
                Some(c) => (p - c.1).abs(),
                None => (p - fifth).max(0.0),
            };
            d.max = d.max.max(e);
            if i == 0 {
                d.first = d.first.max(e);
            }
        }
        if x["token"] != y["token"] {
            d.parted = Some((i, tx[0].1 - tx.get(1).map_or(0.0, |c| c.1)));
            return d;
        }
    }
    if sa.len() != sb.len() {
        d.parted = Some((sa.len().min(sb.len()), 0.0));
    }
    d
}

/// A prompt of ~370-430 tokens, so prefill takes the GPU's GEMM and flash-attention kernels over
/// several tiles (the fixture prompts are 4 to 37 tokens).
fn long_prompt() -> String {
    let para = "fn fibonacci(n: u64) -> u64 { if n < 2 { n } else { fibonacci(n - 1) + fibonacci(n - 2) } }\n\
                // The sequence grows quickly; memoise it when n is large.\n";
    format!("{}fn main() {{", para.repeat(7))
}

/// Bounds for a pair of runs on the GPU: top-5 probabilities within `first` at the first step
/// (the prompt's last-token logits: the batched-prefill criterion) and within `any` at every
/// compared step; tokens part only after a step whose top two are within `tie`.
#[derive(Clone, Copy)]
struct GpuBounds {
    tie: f64,
    first: f64,
    any: f64,
}

/// One real model on the GPU, for every fixture prompt (and one long prompt): the GPU's greedy
/// run against the CPU's (same machine), batched prefill (the default) against token-by-token
/// prefill (`--ubatch 1`: every prompt token through the decode kernels), and the GPU against
/// the reference. Every comparison is printed before any assertion.
fn gpu_check(name: &str, b: GpuBounds, vs_refs: GpuBounds) {
    let Some(path) = model_or_skip(name) else {
        return;
    };
    let cuda = ["--device", "cuda"];
    let mut prompts: Vec<(String, Option<Value>)> = cases(name, &testdata_dir())
        .into_iter()
        .map(|c| (c["prompt"].as_str().unwrap().to_string(), Some(c)))
        .collect();
    prompts.push((long_prompt(), None));
    let mut failures = Vec::new();
    for (prompt, reference) in &prompts {
        let cpu = run_json(&path, prompt, &[GREEDY, &["--device", "cpu"]].concat());
        let gpu = run_json(&path, prompt, &[GREEDY, &cuda].concat());
        let tbt = run_json(&path, prompt, &[GREEDY, &cuda, &["--ubatch", "1"]].concat());
        let n = cpu["prompt_ids"].as_array().map_or(0, Vec::len);
        let mut pairs = vec![
            ("gpu vs cpu", diff_runs(&cpu, &gpu), b),
            ("batched vs token-by-token", diff_runs(&tbt, &gpu), b),
        ];
        if let Some(r) = reference {
            assert_eq!(ids(&gpu["prompt_ids"]), ids(&r["prompt_ids"]), "{name}");
            pairs.push(("gpu vs reference", diff_runs(r, &gpu), vs_refs));
        }
        for (what, d, bound) in pairs {
            eprintln!(
                "{name} [{n} prompt tokens] {what}: top-5 prob diff first step {:.5}, max {:.5}, {}",
                d.first,
                d.max,
                match d.parted {
                    None => "all tokens equal".to_string(),
                    Some((i, gap)) => format!("tokens part at step {i} (top-two gap {gap:.4})"),
                }
            );
            if d.first > bound.first || d.max > bound.any {
                failures.push(format!(
                    "{what} [{n}]: prob diff {:.5} / {:.5}",
                    d.first, d.max
                ));
            }
            match d.parted {
                Some((i, gap)) if gap > bound.tie => {
                    failures.push(format!("{what} [{n}]: tokens part at {i}, gap {gap:.4}"))
                }
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "{name}: {failures:#?}");
}

// Bounds, from the H200 run of 2026-11-21 (docs/benchmarks/real-models-gpu.md), each 10-20%
// over the largest figure measured. The GPU's arithmetic is its own: prompts of 5+ tokens run as
// bf16 tensor-core GEMMs (weights and activations rounded to 8 significant bits; with
// KESTREL_CUDA_GEMM=0 gemma3-270m's long prompt comes within 0.009 of the CPU instead of 0.031),
// attention and matvecs sum in other orders. These models amplify rounding: llama.cpp itself,
// same version, on two CPUs, differs by 0.061 on the 1.5b and 0.058 on gemma3-270m (module docs).
// A real fault (a wrong layout, a missed mask) moves probabilities by far more, and early.

#[test]
#[ignore = "needs CUDA"]
fn gpu_gemma3_270m() {
    // Measured: first step 0.055 (batched vs token-by-token, 425 tokens), any step 0.148, parted
    // at a 0.0154 tie.
    let b = GpuBounds {
        tie: 0.02,
        first: 0.065,
        any: 0.17,
    };
    gpu_check("gemma3-270m", b, b);
}

#[test]
#[ignore = "needs CUDA"]
fn gpu_qwen2_5_coder_0_5b() {
    // Measured: first step 0.023, any step 0.047, parted at a 0.0088 tie.
    let b = GpuBounds {
        tie: 0.01,
        first: 0.03,
        any: 0.055,
    };
    gpu_check("qwen2.5-coder-0.5b", b, b);
}

#[test]
#[ignore = "needs CUDA"]
fn gpu_qwen2_5_coder_1_5b() {
    // Measured: first step 0.043 (against the reference; 0.020 batched vs token-by-token), any
    // step 0.067, parted at a 0.041 gap (GPU vs CPU; the CPU and the reference part at 0.051).
    let b = GpuBounds {
        tie: 0.05,
        first: 0.05,
        any: 0.08,
    };
    gpu_check("qwen2.5-coder-1.5b", b, b);
}
