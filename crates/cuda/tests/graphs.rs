//! Steps as CUDA graphs: a replayed decode step must give the bits of the same step launched
//! eagerly — padded to its bucket (`GraphMode::Pad`) and unpadded (`GraphMode::Off`) — over 64
//! decode steps, for one sequence and for three (bucket 4, one dummy entry), across the
//! attention split-count change at 256 keys; a replayed prefill chunk the bits of the padded
//! chunk launched eagerly, and nearly those of the unpadded one (on the CPU, which computes
//! each token by its own chunk, padding changes no bit: runs without a GPU, and catches padding
//! that touches a real token's K/V). Plus timing reports on a model file (`KESTREL_BENCH_GGUF`):
//! decode with and without graphs, what a graph can save a prefill chunk, and a mixed
//! prompt-length workload with and without graphs.
//!
//! Run on a GPU machine: `cargo test --release -p kestrel-cuda --test graphs -- --include-ignored`.

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::synth::{real_shaped_models, tiny_models};
use common::*;
use kestrel_cpu::backend::{CpuStep, CpuTensor, CpuWeight};
use kestrel_cpu::ops::attention::KvPool;
use kestrel_cpu::CpuBackend;
use kestrel_cuda::{GraphMode, PREFILL_GRAPH_BUCKETS};
use kestrel_engine::forward::forward;
use kestrel_engine::{
    AttnGeom, Backend, BatchEntry, Chunk, Engine, EngineConfig, GraphBucket, StepInfo, WeightRef,
    KV_BLOCK,
};
use kestrel_gguf::GgufFile;
use kestrel_model::{FfnKind, RopeSpec};

const DECODE_STEPS: usize = 64;

/// Prefill `n_seqs` prompts of `prompt_len` tokens (one step each, graphs off in every mode:
/// a padded chunk may round differently, and this compares decode steps only), then decode all
/// sequences together for `DECODE_STEPS` steps on fixed tokens. Returns every decode step's
/// logits rows and the backend's (recordings, replays).
fn decode_logits(
    f: &Arc<GgufFile>,
    vocab: usize,
    mode: GraphMode,
    n_seqs: usize,
    prompt_len: usize,
) -> (Vec<Vec<Vec<f32>>>, (usize, usize)) {
    let spec = kestrel_model::spec_from_gguf(f).expect("spec");
    let g = gpu();
    g.set_graph_mode(GraphMode::Off);
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
    e.backend.set_graph_mode(mode);
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

/// Prompts prefilled in one or two chunks (the later chunk at a depth, the earlier wanting no
/// logits), three times over with different tokens. Returns each prompt's last logits and the
/// backend's (recordings, replays).
fn prefill_logits(
    f: &Arc<GgufFile>,
    vocab: usize,
    mode: GraphMode,
) -> (Vec<Vec<f32>>, (usize, usize)) {
    let spec = kestrel_model::spec_from_gguf(f).expect("spec");
    let g = gpu();
    g.set_graph_mode(mode);
    let cfg = EngineConfig {
        n_ctx: 512,
        kv_tokens: 1024,
    };
    let mut e = Engine::load(g, spec, f, cfg, &mut |_, _| {}).expect("engine");
    // An arena that never grows, which would drop the graphs recorded so far.
    e.backend.reserve_activations(256 << 20).expect("arena");
    // Buckets 32 (three chunks: 20; 25 and then 20 at position 25, one key), 16, 208, 112 and
    // 144 at position 100 (a key with 4 attention splits). Chunks of at least 12 tokens, so
    // unpadded ones take the GEMM path too (without a bf16 copy it starts at 12 rows).
    let plans: [&[usize]; 5] = [&[20], &[25, 20], &[13], &[200], &[100, 130]];
    let mut out = Vec::new();
    for rep in 0..3 {
        for (k, plan) in plans.iter().enumerate() {
            let s = e.new_seq();
            let mut pos = 0;
            for (c, &len) in plan.iter().enumerate() {
                let last = c + 1 == plan.len();
                let entries: Vec<BatchEntry> = (pos..pos + len)
                    .map(|i| BatchEntry {
                        seq: s,
                        token: ((rep * 7919 + k * 104_729 + i * 31 + 13) % vocab) as u32,
                        logits: last && i + 1 == pos + len,
                        chunk: None,
                    })
                    .collect();
                let logits = e.step(&entries).expect("prefill");
                assert_eq!(logits.len(), usize::from(last));
                out.extend(logits);
                pos += len;
            }
            e.free_seq(s);
        }
    }
    (out, e.backend.graph_stats())
}

#[test]
#[ignore = "needs CUDA"]
fn prefill_graph_replay_is_bit_identical_to_eager_launches() {
    let mut cases = tiny_models();
    cases.extend(real_shaped_models().into_iter().take(1));
    let mut failures = Vec::new();
    for (label, f, vocab) in &cases {
        let (off, _) = prefill_logits(f, *vocab, GraphMode::Off);
        let (pad, _) = prefill_logits(f, *vocab, GraphMode::Pad);
        let (on, (recorded, replays)) = prefill_logits(f, *vocab, GraphMode::On);
        // 21 chunks under 5 keys: each key runs eagerly once and is recorded the next time.
        println!("{label}: {recorded} prefill graphs recorded, {replays} of 21 chunks replayed");
        if recorded < 5 || replays + 2 * recorded < 21 {
            failures.push(format!("{label}: {replays} replays, {recorded} recordings"));
        }
        let rows = |v: &[Vec<f32>]| v.iter().map(|r| vec![r.clone()]).collect::<Vec<_>>();
        if let Some(d) = first_difference(&rows(&pad), &rows(&on)) {
            failures.push(format!("{label}: graph vs eager (padded): {d}"));
        }
        // Padding changes no real token's inputs, only the GEMMs' row count, so cuBLAS's
        // choice of kernel and with it the f32 summation order. Here that gives the same bits
        // (H200, cuBLAS 13), but another chunk length or library may not: a last-bit change
        // cascades through a random model's layers, as far as 2.7e-2 relative in the
        // 24-layer one (a 230-token prompt padded to 240, seen on the H200). So the bound is
        // the whole-model one for differently rounded paths (tests/gemm.rs, 6e-2); a padding
        // token leaking into a real one's attention moves the logits by O(1).
        let worst = off
            .iter()
            .zip(&pad)
            .map(|(a, b)| rel_err(a, b))
            .fold(0.0, f64::max);
        println!("{label}: padded vs unpadded logits, largest relative error {worst:.2e}");
        if worst > 6e-2 {
            failures.push(format!("{label}: padded vs unpadded: {worst:.2e} > 6e-2"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The model the report tests time (`KESTREL_BENCH_GGUF`, e.g. from `kestrel synth`): its path,
/// file and spec, or None with a note when it is not set.
fn bench_model() -> Option<(String, Arc<GgufFile>, kestrel_model::ModelSpec)> {
    let Ok(path) = std::env::var("KESTREL_BENCH_GGUF") else {
        println!("KESTREL_BENCH_GGUF is not set: skipped");
        return None;
    };
    let f = Arc::new(GgufFile::open(&path).expect("model file"));
    let spec = kestrel_model::spec_from_gguf(&f).expect("spec");
    Some((path, f, spec))
}

/// Not a check: decode speed with and without graphs on the model at `KESTREL_BENCH_GGUF`
/// (e.g. from `kestrel synth`), for batches of 1 to 64 sequences after a 64-token prompt each,
/// greedy tokens from `step_argmax` (what `kestrel run --temp 0` and the server do). The same
/// sequences decode with graphs off and on in turn; medians of 3 runs of 16 steps each.
#[test]
#[ignore = "needs CUDA and KESTREL_BENCH_GGUF"]
fn decode_speed_report() {
    let Some((path, f, spec)) = bench_model() else {
        return;
    };
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
                        .map(|(&seq, &token)| BatchEntry::decode(seq, token))
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

/// One prefill chunk of `n` tokens of one sequence at positions `start..start + n`, the last
/// token wanting logits (what `Engine::step` plans for a chunk of a prompt).
fn chunk_step(n: usize, start: usize, vocab: usize) -> StepInfo {
    let end = (start + n) as u32;
    StepInfo {
        tokens: (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect(),
        positions: (start as u32..end).collect(),
        slots: (start as u32..end).collect(),
        seq_index: vec![0; n],
        block_tables: vec![(0..end.div_ceil(KV_BLOCK as u32)).collect()],
        logit_rows: vec![n as u32 - 1],
        chunks: (0..n as u32)
            .map(|index| Chunk {
                len: n as u32,
                index,
            })
            .collect(),
    }
}

/// Not a check: whether CUDA graphs would pay for prefill chunks, on the model at
/// `KESTREL_BENCH_GGUF` with the CLI's bf16 weight cache. Per chunk (tokens, first position),
/// medians of 10 steps of `begin_step` + `forward` + `argmax_rows` (what `kestrel bench` times
/// per chunk): eagerly — wall time and the host's enqueue time (until `forward` returns, before
/// the sync) — and as a replay of the same step, unpadded (`GraphBucket::Prefill` of its own
/// length), which runs the kernels back to back: the GPU's busy time, and what a prefill graph
/// can give at best (`PREFILL_GRAPH_BUCKETS` stops where that is under 3%). Eager and replayed
/// steps alternate.
#[test]
#[ignore = "needs CUDA and KESTREL_BENCH_GGUF"]
fn prefill_graph_report() {
    let Some((path, f, spec)) = bench_model() else {
        return;
    };
    let vocab = spec.n_vocab;
    let g = gpu();
    g.set_graph_mode(GraphMode::On);
    let w = kestrel_engine::weights::load(&g, &spec, &f, &mut |_, _| {}).expect("weights");
    let rep = g.cache_weights(&w.layer_matrices(), g.default_cache_reserve());
    let head = g.cache_weights(&[w.output()], g.default_cache_reserve());
    println!(
        "{path}: {} (PDL {}); {rep}; output head cached: {}",
        g.name(),
        g.pdl(),
        head.cached > 0
    );
    let cases = [
        (32usize, 0usize),
        (128, 0),
        (512, 0),
        (2048, 0),
        (2048, 2048),
    ];
    let slots = cases.iter().map(|&(n, s)| n + s).max().unwrap_or(0) + KV_BLOCK;
    let mut kv: Vec<_> = spec
        .layers
        .iter()
        .map(|l| {
            l.kv_source
                .is_none()
                .then(|| g.alloc_kv(slots, l.kv_dim()).expect("KV pool"))
        })
        .collect();
    println!(
        "| tokens | first position | eager ms | host enqueue ms | graph replay ms | graph saves \
         | replay bits |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for (n, start) in cases {
        let info = chunk_step(n, start, vocab);
        let key = GraphBucket::Prefill(n);
        // (wall s, enqueue s, last logits) of one step, eager or through the graph calls.
        let mut run = |graph: bool| {
            let t0 = Instant::now();
            let step = g.begin_step(&info);
            let replayed = if graph { g.graph_replay(key) } else { None };
            let logits = replayed.unwrap_or_else(|| {
                let rec = graph && g.graph_begin(key);
                let l = forward(&g, &spec, &w, &mut kv, &step, n, 1);
                if rec && !g.graph_end(key, &l) {
                    drop(l);
                    return forward(&g, &spec, &w, &mut kv, &step, n, 1);
                }
                l
            });
            let t1 = Instant::now();
            g.argmax_rows(&logits, vocab);
            let wall = t0.elapsed().as_secs_f64();
            (wall, (t1 - t0).as_secs_f64(), g.read(&logits))
        };
        // Eager twice (the arena grows to the chunk), then through the graph calls three times
        // (eager under the key, recorded, replayed).
        for graph in [false, false, true, true, true] {
            run(graph);
        }
        let (mut eager, mut enqueue, mut replay) = (Vec::new(), Vec::new(), Vec::new());
        let (mut eager_bits, mut graph_bits) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            let (wall, enq, l) = run(false);
            eager.push(wall);
            enqueue.push(enq);
            eager_bits = l;
            let (wall, _, l) = run(true);
            replay.push(wall);
            graph_bits = l;
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2] * 1e3
        };
        let (e, q, r) = (
            median(&mut eager),
            median(&mut enqueue),
            median(&mut replay),
        );
        let same = eager_bits
            .iter()
            .zip(&graph_bits)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        println!(
            "| {n} | {start} | {e:.3} | {q:.3} | {r:.3} | {:.1}% | {} |",
            100.0 * (e - r) / e,
            if same { "equal" } else { "DIFFER" }
        );
    }
    println!("graph stats (recorded, replays): {:?}", g.graph_stats());
}

/// Not a check: a mixed prompt-length workload with graphs off and on, on the model at
/// `KESTREL_BENCH_GGUF` with the CLI's bf16 weight cache: 200 prompts of 8-640 tokens (seeded,
/// uniform), each prefilled alone in one step to its greedy token, as `kestrel run` and an idle
/// server do. Each mode runs the list twice: the first pass pays for the recordings (a bucket
/// runs eagerly once, is recorded the next time, replayed after), the second is warm.
#[test]
#[ignore = "needs CUDA and KESTREL_BENCH_GGUF"]
fn prefill_mixed_report() {
    let Some((path, f, spec)) = bench_model() else {
        return;
    };
    let vocab = spec.n_vocab;
    let cfg = EngineConfig {
        n_ctx: 1024,
        kv_tokens: 2048,
    };
    let mut e = Engine::load(gpu(), spec, &f, cfg, &mut |_, _| {}).expect("engine");
    let b = &e.backend;
    let rep = b.cache_weights(&e.weights().layer_matrices(), b.default_cache_reserve());
    let head = b.cache_weights(&[e.weights().output()], b.default_cache_reserve());
    println!(
        "{path}: {}; {rep}; output head cached: {}",
        b.name(),
        head.cached > 0
    );
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let prompts: Vec<Vec<u32>> = (0..200)
        .map(|_| {
            let len = 8 + (next() % 633) as usize;
            (0..len).map(|_| (next() % vocab as u64) as u32).collect()
        })
        .collect();
    let tokens: usize = prompts.iter().map(Vec::len).sum();
    println!("| graphs | pass | seconds | prompt tokens/s | mean ms per prompt |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for mode in [GraphMode::Off, GraphMode::On] {
        e.backend.set_graph_mode(mode);
        for pass in 1..=2 {
            let t = Instant::now();
            for p in &prompts {
                let s = e.new_seq();
                e.step_argmax(&BatchEntry::run(s, p, true))
                    .expect("prefill");
                e.free_seq(s);
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "| {mode:?} | {pass} | {secs:.3} | {:.0} | {:.3} |",
                tokens as f64 / secs,
                secs * 1e3 / prompts.len() as f64
            );
        }
    }
    println!(
        "graph stats (recorded, replays): {:?}",
        e.backend.graph_stats()
    );
}

/// The CPU backend with this backend's prefill buckets: `Engine::step` pads its prefill chunks
/// as on the GPU (nothing is recorded). The CPU computes each token by its own chunk, whatever
/// else shares the step, so padding must change no bit.
struct PaddedCpu(CpuBackend);

impl Backend for PaddedCpu {
    type Weight = CpuWeight;
    type Tensor = CpuTensor;
    type Kv = KvPool;
    type Step = CpuStep;

    fn name(&self) -> String {
        self.0.name()
    }
    fn upload(&self, w: WeightRef) -> anyhow::Result<CpuWeight> {
        self.0.upload(w)
    }
    fn alloc(&self, rows: usize, cols: usize) -> CpuTensor {
        self.0.alloc(rows, cols)
    }
    fn alloc_kv(&self, n_slots: usize, kv_dim: usize) -> anyhow::Result<KvPool> {
        self.0.alloc_kv(n_slots, kv_dim)
    }
    fn begin_step(&self, step: &StepInfo) -> CpuStep {
        self.0.begin_step(step)
    }
    fn embed(&self, table: &CpuWeight, step: &CpuStep, scale: f32, out: &mut CpuTensor) {
        self.0.embed(table, step, scale, out)
    }
    fn rms_norm(
        &self,
        x: &CpuTensor,
        w: Option<&CpuWeight>,
        width: usize,
        eps: f32,
        out: &mut CpuTensor,
    ) {
        self.0.rms_norm(x, w, width, eps, out)
    }
    fn matmul(&self, w: &CpuWeight, x: &CpuTensor, out: &mut CpuTensor) {
        self.0.matmul(w, x, out)
    }
    fn add_bias(&self, x: &mut CpuTensor, bias: &CpuWeight) {
        self.0.add_bias(x, bias)
    }
    fn rope(
        &self,
        x: &mut CpuTensor,
        head_dim: usize,
        rope: &RopeSpec,
        factors: Option<&CpuWeight>,
        step: &CpuStep,
    ) {
        self.0.rope(x, head_dim, rope, factors, step)
    }
    fn kv_write(&self, k: &CpuTensor, v: &CpuTensor, kv: &mut KvPool, step: &CpuStep) {
        self.0.kv_write(k, v, kv, step)
    }
    fn attention(
        &self,
        q: &CpuTensor,
        kv: &KvPool,
        geom: AttnGeom,
        step: &CpuStep,
        out: &mut CpuTensor,
    ) {
        self.0.attention(q, kv, geom, step, out)
    }
    fn gated_act(&self, gate: &mut CpuTensor, up: &CpuTensor, kind: FfnKind) {
        self.0.gated_act(gate, up, kind)
    }
    fn add(&self, x: &mut CpuTensor, y: &CpuTensor) {
        self.0.add(x, y)
    }
    fn scale_by(&self, x: &mut CpuTensor, s: &CpuWeight) {
        self.0.scale_by(x, s)
    }
    fn scale(&self, x: &mut CpuTensor, c: f32) {
        self.0.scale(x, c)
    }
    fn copy_cols(&self, src: &CpuTensor, col0: usize, out: &mut CpuTensor) {
        self.0.copy_cols(src, col0, out)
    }
    fn gather_logit_rows(&self, x: &CpuTensor, step: &CpuStep, out: &mut CpuTensor) {
        self.0.gather_logit_rows(x, step, out)
    }
    fn softcap(&self, x: &mut CpuTensor, cap: f32) {
        self.0.softcap(x, cap)
    }
    fn copy(&self, src: &CpuTensor, dst: &mut CpuTensor) {
        self.0.copy(src, dst)
    }
    fn read(&self, x: &CpuTensor) -> Vec<f32> {
        self.0.read(x)
    }
    fn chunk_invariant(&self, c: Chunk) -> bool {
        self.0.chunk_invariant(c)
    }
    fn prefill_graph_buckets(&self) -> &[usize] {
        &PREFILL_GRAPH_BUCKETS
    }
}

/// Prompts in one or two chunks (the earlier wanting no logits; 9-200 tokens, padded to 16-208,
/// some past the sequence's blocks), then 3 decode steps each: every logits row.
fn padded_prefill_logits<B: Backend>(b: B, f: &Arc<GgufFile>, vocab: usize) -> Vec<Vec<f32>> {
    let spec = kestrel_model::spec_from_gguf(f).expect("spec");
    let cfg = EngineConfig {
        n_ctx: 512,
        kv_tokens: 1024,
    };
    let mut e = Engine::load(b, spec, f, cfg, &mut |_, _| {}).expect("engine");
    let plans: [&[usize]; 5] = [&[20], &[25, 20], &[9], &[200], &[100, 130]];
    let mut out = Vec::new();
    for (k, plan) in plans.iter().enumerate() {
        let s = e.new_seq();
        let tok = |i: usize| ((k * 104_729 + i * 31 + 13) % vocab) as u32;
        let mut pos = 0;
        for (c, &len) in plan.iter().enumerate() {
            let last = c + 1 == plan.len();
            let entries: Vec<BatchEntry> = (pos..pos + len)
                .map(|i| BatchEntry {
                    seq: s,
                    token: tok(i),
                    logits: last && i + 1 == pos + len,
                    chunk: None,
                })
                .collect();
            out.extend(e.step(&entries).expect("prefill"));
            pos += len;
        }
        for i in pos..pos + 3 {
            out.extend(
                e.step(&BatchEntry::run(s, &[tok(i)], true))
                    .expect("decode"),
            );
        }
        e.free_seq(s);
    }
    out
}

#[test]
fn prefill_padding_changes_no_bit_on_the_cpu() {
    for (label, f, vocab) in tiny_models() {
        let plain = padded_prefill_logits(CpuBackend::new(), &f, vocab);
        let padded = padded_prefill_logits(PaddedCpu(CpuBackend::new()), &f, vocab);
        assert_eq!(plain.len(), 5 * 4);
        let rows = |v: &[Vec<f32>]| v.iter().map(|r| vec![r.clone()]).collect::<Vec<_>>();
        if let Some(d) = first_difference(&rows(&plain), &rows(&padded)) {
            panic!("{label}: padded vs unpadded prefill on the CPU: {d}");
        }
    }
}
