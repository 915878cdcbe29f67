//! Decode steps as CUDA graphs: a replayed step must give the bits of the same step launched
//! eagerly — padded to its bucket (`GraphMode::Pad`) and unpadded (`GraphMode::Off`) — over 64
//! decode steps, for one sequence and for three (bucket 4, one dummy entry), across the
//! attention split-count change at 256 keys. Plus a timing report of decode with and without
//! graphs on a model file (`KESTREL_BENCH_GGUF`).
//!
//! Run on a GPU machine: `cargo test --release -p kestrel-cuda --test graphs -- --include-ignored`.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::synth::{real_shaped_models, tiny_models};
use common::*;
use kestrel_cuda::GraphMode;
use kestrel_engine::{Backend, BatchEntry, Engine, EngineConfig};
use kestrel_gguf::GgufFile;

const DECODE_STEPS: usize = 64;

/// Prefill `n_seqs` prompts of `prompt_len` tokens (one step each), then decode all sequences
/// together for `DECODE_STEPS` steps on fixed tokens. Returns every decode step's logits rows
/// and the backend's (recordings, replays).
fn decode_logits(
    f: &Arc<GgufFile>,
    vocab: usize,
    mode: GraphMode,
    n_seqs: usize,
    prompt_len: usize,
) -> (Vec<Vec<Vec<f32>>>, (usize, usize)) {
    let spec = kestrel_model::spec_from_gguf(f).expect("spec");
    let g = gpu();
    g.set_graph_mode(mode);
    let cfg = EngineConfig {
        n_ctx: prompt_len + DECODE_STEPS + 1,
        kv_tokens: (prompt_len + DECODE_STEPS + 16) * n_seqs,
    };
    let mut e = Engine::load(g, spec, f, cfg, &mut |_, _| {}).expect("engine");
    let tok = |s: usize, i: usize| ((s * 7919 + i * 104_729 + 13) % vocab) as u32;
    let seqs: Vec<usize> = (0..n_seqs).map(|_| e.new_seq()).collect();
    for (k, &s) in seqs.iter().enumerate() {
        let entries: Vec<BatchEntry> = (0..prompt_len)
            .map(|i| BatchEntry {
                seq: s,
                token: tok(k, i),
                logits: i + 1 == prompt_len,
                chunk: None,
            })
            .collect();
        e.step(&entries).expect("prefill");
    }
    let mut out = Vec::new();
    for i in 0..DECODE_STEPS {
        let entries: Vec<BatchEntry> = seqs
            .iter()
            .enumerate()
            .map(|(k, &s)| BatchEntry {
                seq: s,
                token: tok(k + 100, i),
                logits: true,
                chunk: None,
            })
            .collect();
        out.push(e.step(&entries).expect("decode"));
    }
    (out, e.backend.graph_stats())
}

fn first_difference(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> Option<String> {
    for (i, (sa, sb)) in a.iter().zip(b).enumerate() {
        for (k, (ra, rb)) in sa.iter().zip(sb).enumerate() {
            if let Some(j) = ra
                .iter()
                .zip(rb)
                .position(|(x, y)| x.to_bits() != y.to_bits())
            {
                return Some(format!(
                    "step {i}, sequence {k}, logit {j}: {} vs {} (rel err of the row {:.2e})",
                    ra[j],
                    rb[j],
                    rel_err(ra, rb)
                ));
            }
        }
    }
    None
}

#[test]
#[ignore = "needs CUDA"]
fn graph_replay_is_bit_identical_to_eager_launches() {
    let mut cases = tiny_models();
    cases.extend(real_shaped_models().into_iter().take(1));
    let mut failures = Vec::new();
    for (label, f, vocab) in &cases {
        // (sequences, prompt): one sequence far from 256 keys; three crossing 256 during decode.
        for (n_seqs, prompt_len) in [(1usize, 20usize), (3, 230)] {
            let t = Instant::now();
            let (off, _) = decode_logits(f, *vocab, GraphMode::Off, n_seqs, prompt_len);
            let (pad, _) = decode_logits(f, *vocab, GraphMode::Pad, n_seqs, prompt_len);
            let (on, (recorded, replays)) =
                decode_logits(f, *vocab, GraphMode::On, n_seqs, prompt_len);
            println!(
                "{label}, {n_seqs} sequences, prompt {prompt_len}: {recorded} graphs recorded, \
                 {replays} of {DECODE_STEPS} decode steps replayed ({:.1}s)",
                t.elapsed().as_secs_f64()
            );
            // Each key runs eagerly once and is recorded the next time: at most 2 steps per key
            // are not replays (keys: one per attention split count seen).
            if replays + 2 * recorded < DECODE_STEPS || recorded == 0 {
                failures.push(format!(
                    "{label} ×{n_seqs}: only {replays} replays, {recorded} recordings"
                ));
            }
            if let Some(d) = first_difference(&pad, &on) {
                failures.push(format!("{label} ×{n_seqs}: graph vs eager (padded): {d}"));
            }
            if let Some(d) = first_difference(&off, &pad) {
                failures.push(format!("{label} ×{n_seqs}: padded vs unpadded: {d}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Not a check: decode speed with and without graphs on the model at `KESTREL_BENCH_GGUF`
/// (e.g. from `kestrel synth`), for batches of 1 to 64 sequences after a 64-token prompt each,
/// greedy tokens from `step_argmax` (what `kestrel run --temp 0` and the server do). The same
/// sequences decode with graphs off and on in turn; medians of 3 runs of 16 steps each.
#[test]
#[ignore = "needs CUDA and KESTREL_BENCH_GGUF"]
fn decode_speed_report() {
    let Ok(path) = std::env::var("KESTREL_BENCH_GGUF") else {
        println!("KESTREL_BENCH_GGUF is not set: skipped");
        return;
    };
    let f = Arc::new(GgufFile::open(&path).expect("model file"));
    let spec = kestrel_model::spec_from_gguf(&f).expect("spec");
    let vocab = spec.n_vocab;
    let (prompt, steps, reps) = (64usize, 16usize, 3usize);
    let g = gpu();
    let cfg = EngineConfig {
        n_ctx: prompt + 2 * reps * steps + 8,
        kv_tokens: (prompt + 2 * reps * steps + 16) * 64,
    };
    let mut e = Engine::load(g, spec, &f, cfg, &mut |_, _| {}).expect("engine");
    // The CLI's default: resident bf16 layer weights for the GEMM path (KESTREL_WEIGHT_CACHE=off
    // leaves them out).
    if std::env::var("KESTREL_WEIGHT_CACHE").as_deref() != Ok("off") {
        let rep = e.backend.cache_weights(
            &e.weights().layer_matrices(),
            e.backend.default_cache_reserve(),
        );
        println!("{rep}; GEMM from {:?} rows", e.backend.gemm_rows());
    }
    println!(
        "{}: {} (PDL {})",
        path,
        e.backend.name(),
        if e.backend.pdl() { "on" } else { "off" }
    );
    println!("| sequences | graphs | ms/step | tokens/s | per sequence t/s |");
    println!("| ---: | --- | ---: | ---: | ---: |");
    for n in [1usize, 2, 4, 8, 16, 32, 64] {
        let seqs: Vec<usize> = (0..n).map(|_| e.new_seq()).collect();
        let entries: Vec<BatchEntry> = seqs
            .iter()
            .enumerate()
            .flat_map(|(k, &s)| {
                (0..prompt).map(move |i| BatchEntry {
                    seq: s,
                    token: ((k * 31 + i * 17) % vocab) as u32,
                    logits: i + 1 == prompt,
                    chunk: None,
                })
            })
            .collect();
        let mut toks = e.step_argmax(&entries).expect("prefill");
        let mut times = [Vec::new(), Vec::new()];
        for _ in 0..reps {
            for (m, mode) in [GraphMode::Off, GraphMode::On].into_iter().enumerate() {
                e.backend.set_graph_mode(mode);
                let t = Instant::now();
                for _ in 0..steps {
                    let entries: Vec<BatchEntry> = seqs
                        .iter()
                        .zip(&toks)
                        .map(|(&seq, &token)| BatchEntry {
                            seq,
                            token,
                            logits: true,
                            chunk: None,
                        })
                        .collect();
                    toks = e.step_argmax(&entries).expect("decode");
                }
                times[m].push(t.elapsed().as_secs_f64() / steps as f64);
            }
        }
        for &s in &seqs {
            e.free_seq(s);
        }
        for (m, ts) in times.iter_mut().enumerate() {
            // The first run of each mode pays for recording its graphs: median of the rest.
            ts.remove(0);
            ts.sort_by(f64::total_cmp);
            let ms = ts[ts.len() / 2] * 1e3;
            println!(
                "| {n} | {} | {ms:.3} | {:.1} | {:.1} |",
                ["off", "on"][m],
                n as f64 * 1e3 / ms,
                1e3 / ms
            );
        }
    }
    println!(
        "graph stats (recorded, replays): {:?}",
        e.backend.graph_stats()
    );
}
