//! `kestrel bench`: llama-bench style throughput — prompt processing (ppN: N tokens in one pass)
//! and text generation (tgN: N tokens one at a time), repeated, warm-up excluded.

use std::time::Instant;

use anyhow::Result;
use kestrel_engine::{Backend, BatchEntry, Engine};
use serde_json::json;

use crate::load::{load_on, ContextArgs, Loaded, OnBackend};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub ctx: ContextArgs,
    /// Prompt lengths to test (comma-separated; 0 skips).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub n_prompt: Vec<usize>,
    /// Generation lengths to test (comma-separated; 0 skips).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub n_gen: Vec<usize>,
    /// Context depth already in the cache before each test.
    #[arg(
        short = 'd',
        long = "depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    pub depth: Vec<usize>,
    /// Batched decode: for each count B (comma-separated), B sequences are prefilled with
    /// `--batch-prompt` tokens each, then decode `--batch-gen` tokens together, one step per
    /// token for all of them (llama-batched-bench's S_TG: aggregate decode t/s).
    #[arg(short = 'b', long = "batch", value_delimiter = ',')]
    pub batch: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    pub batch_prompt: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_gen: usize,
    /// Repetitions per test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    pub reps: usize,
    /// Prompt tokens per forward pass (default: 512 on the CPU, as llama.cpp, whose arithmetic
    /// the CPU follows; 2048 on a GPU, measured fastest).
    #[arg(long)]
    pub ubatch: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

struct Row {
    test: String,
    tps: Vec<f64>,
}

pub fn run(a: Args) -> Result<()> {
    let single =
        a.depth.iter().max().unwrap_or(&0) + a.n_prompt.iter().chain(&a.n_gen).max().unwrap_or(&0);
    let batched = if a.batch.is_empty() {
        0
    } else {
        a.batch_prompt + a.batch_gen
    };
    let need = single.max(batched) + 1;
    let ctx = ContextArgs {
        ctx: Some(a.ctx.ctx.unwrap_or(0).max(need)),
        ..a.ctx.clone()
    };
    let n_seqs = a.batch.iter().copied().max().unwrap_or(1).max(1);
    load_on(&ctx, n_seqs, Cmd(a))
}

struct Cmd(Args);

impl OnBackend for Cmd {
    type Out = ();
    fn run<B: Backend>(self, m: Loaded<B>) -> Result<()> {
        run_on(self.0, m)
    }
}

fn run_on<B: Backend>(a: Args, mut m: Loaded<B>) -> Result<()> {
    let n_vocab = m.engine.spec.n_vocab as u32;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut tokens = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % n_vocab as u64) as u32
            })
            .collect()
    };
    let ubatch = a.ubatch.unwrap_or(m.engine.backend.default_ubatch());
    let mut rows = Vec::new();
    for &depth in &a.depth {
        let suffix = if depth > 0 {
            format!(" @ d{depth}")
        } else {
            String::new()
        };
        for &n in a.n_prompt.iter().filter(|&&n| n > 0) {
            let toks = tokens(n);
            let pre = tokens(depth);
            let tps = measure(&mut m.engine, a.reps, &pre, ubatch, |e, seq| {
                for chunk in toks.chunks(ubatch.max(1)) {
                    run_chunk(e, seq, chunk, true)?;
                }
                Ok(n)
            })?;
            rows.push(Row {
                test: format!("pp{n}{suffix}"),
                tps,
            });
        }
        for &n in a.n_gen.iter().filter(|&&n| n > 0) {
            let toks = tokens(n);
            let pre = tokens(depth);
            let tps = measure(&mut m.engine, a.reps, &pre, ubatch, |e, seq| {
                for &t in &toks {
                    run_chunk(e, seq, &[t], true)?;
                }
                Ok(n)
            })?;
            rows.push(Row {
                test: format!("tg{n}{suffix}"),
                tps,
            });
        }
    }
    for &b in a.batch.iter().filter(|&&b| b > 0) {
        let prompts: Vec<Vec<u32>> = (0..b).map(|_| tokens(a.batch_prompt)).collect();
        let tps = measure_batch(&mut m.engine, a.reps, &prompts, a.batch_gen)?;
        rows.push(Row {
            test: format!("B{b} pp{}+tg{}", a.batch_prompt, a.batch_gen),
            tps,
        });
    }
    let size_gib = m.file.data_bytes() as f64 / (1u64 << 30) as f64;
    let params: u64 = m.file.tensors.iter().map(|t| t.n_elements()).sum();
    let model = m
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let backend = m.engine.backend.name();
    if a.json {
        let out: Vec<_> = rows
            .iter()
            .map(|r| {
                let (mean, sd) = mean_sd(&r.tps);
                json!({"model": model, "size_bytes": m.file.data_bytes(), "params": params,
                       "backend": backend, "test": r.test, "tps_mean": mean, "tps_sd": sd, "samples": r.tps})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("| model | size | params | backend | test | t/s |");
        println!("| --- | ---: | ---: | --- | ---: | ---: |");
        for r in &rows {
            let (mean, sd) = mean_sd(&r.tps);
            println!(
                "| {model} | {size_gib:.2} GiB | {:.2} B | {backend} | {} | {mean:.2} ± {sd:.2} |",
                params as f64 / 1e9,
                r.test
            );
        }
    }
    Ok(())
}

/// One forward pass over `toks`. The step returns the greedy token of its last row (what
/// `kestrel run --temp 0` asks for: on a GPU the argmax runs there and 4 bytes come back).
fn run_chunk<B: Backend>(
    e: &mut Engine<B>,
    seq: usize,
    toks: &[u32],
    last_logits: bool,
) -> Result<()> {
    let entries = BatchEntry::run(seq, toks, last_logits);
    e.step_argmax(&entries)?;
    Ok(())
}

/// Untimed runs before the timed ones of `measure`: a backend with graphs runs a step shape
/// eagerly the first time it sees it and records it the second (a prompt of a few chunks
/// shows each shape once a run), so the timed runs replay, as a long-running process does;
/// one warms a backend without.
fn warmups<B: Backend>(b: &B) -> usize {
    if b.graph_buckets().is_empty() && b.prefill_graph_buckets().is_empty() {
        1
    } else {
        2
    }
}

/// `warmups` then `reps` timed runs of `body` on a fresh sequence prefilled with `pre`.
fn measure<B: Backend>(
    e: &mut Engine<B>,
    reps: usize,
    pre: &[u32],
    ubatch: usize,
    mut body: impl FnMut(&mut Engine<B>, usize) -> Result<usize>,
) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    let warmup = warmups(&e.backend);
    for rep in 0..reps.max(1) + warmup {
        let seq = e.new_seq();
        // The last chunk's greedy token waits for the device: without it a GPU would still be
        // prefilling the depth when the timer starts, and its tail would count against the test.
        let n_chunks = pre.len().div_ceil(ubatch.max(1));
        for (i, chunk) in pre.chunks(ubatch.max(1)).enumerate() {
            run_chunk(e, seq, chunk, i + 1 == n_chunks)?;
        }
        let t = Instant::now();
        let n = body(e, seq)?;
        let secs = t.elapsed().as_secs_f64();
        e.free_seq(seq);
        if rep >= warmup {
            out.push(n as f64 / secs);
        }
    }
    Ok(out)
}

/// One warm-up then `reps` timed runs: a sequence per prompt, each prefilled alone (untimed),
/// then `gen` decode steps of all of them together, each feeding back its greedy token.
/// Returns aggregate decode t/s (sequences × `gen` / decode time).
fn measure_batch<B: Backend>(
    e: &mut Engine<B>,
    reps: usize,
    prompts: &[Vec<u32>],
    gen: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for rep in 0..=reps.max(1) {
        let seqs: Vec<usize> = prompts.iter().map(|_| e.new_seq()).collect();
        let mut next = Vec::with_capacity(seqs.len());
        for (&seq, p) in seqs.iter().zip(prompts) {
            let entries = BatchEntry::run(seq, p, true);
            next.extend(e.step_argmax(&entries)?);
        }
        let t = Instant::now();
        for _ in 0..gen {
            let entries: Vec<BatchEntry> = seqs
                .iter()
                .zip(&next)
                .map(|(&seq, &token)| BatchEntry::decode(seq, token))
                .collect();
            next = e.step_argmax(&entries)?;
        }
        let secs = t.elapsed().as_secs_f64();
        for seq in seqs {
            e.free_seq(seq);
        }
        if rep > 0 {
            out.push((prompts.len() * gen) as f64 / secs);
        }
    }
    Ok(out)
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}
