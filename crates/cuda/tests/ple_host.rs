//! Gemma 4's per-layer-embedding table kept in mapped host memory (`TablePlacement::Host`,
//! `kestrel --ple host`) must give exactly the bits of the device-resident table: the same
//! `embed` kernel reads the same bytes, over PCIe. Checked on the tiny Gemma 4 oracle fixtures
//! (and on the file at `KESTREL_PLE_GGUF` when set, e.g. `kestrel synth --preset gemma4-e4b`):
//! a prompt in two prefill steps, then decode steps, each run once eagerly and once with decode
//! steps recorded as CUDA graphs and replayed.
//!
//! Run on a GPU machine: `cargo test --release -p kestrel-cuda --test ple_host -- --include-ignored`.

#[path = "../../cpu/tests/oracle/mod.rs"]
mod oracle;

use std::sync::Arc;

use kestrel_cuda::{CudaBackend, GraphMode, TablePlacement};
use kestrel_engine::{BatchEntry, Engine, EngineConfig};
use kestrel_gguf::GgufFile;

const PROMPT: usize = 24;
const DECODE_STEPS: usize = 16;

/// Every logits row of a `PROMPT`-token prompt (two prefill steps) and of `DECODE_STEPS` single
/// token steps, eagerly (`GraphMode::Off`) then with graphs (`On`), on one engine; and the
/// graph replays counted.
fn run(
    file: &Arc<GgufFile>,
    placement: TablePlacement,
) -> ([Vec<Vec<f32>>; 2], usize, Vec<kestrel_cuda::TableReport>) {
    let spec = kestrel_model::spec_from_gguf(file).expect("spec");
    let vocab = spec.n_vocab;
    let g = CudaBackend::new(0).unwrap_or_else(|e| panic!("CUDA backend: {e:#}"));
    g.set_table_placement(placement);
    let cfg = EngineConfig {
        n_ctx: PROMPT + DECODE_STEPS + 8,
        kv_tokens: PROMPT + DECODE_STEPS + 8,
    };
    let mut e = Engine::load(g, spec, file, cfg, &mut |_, _| {}).expect("engine");
    let host = e
        .weights()
        .ple
        .as_ref()
        .expect("a PLE model")
        .token_embd
        .in_host_memory();
    assert_eq!(
        host,
        placement == TablePlacement::Host,
        "where the table went"
    );
    // Token ids spread over the whole vocabulary: the table's rows far apart.
    let tok = |i: usize| ((i * 104_729 + 7919) % vocab) as u32;
    let mut out = [Vec::new(), Vec::new()];
    for (m, mode) in [GraphMode::Off, GraphMode::On].into_iter().enumerate() {
        e.backend.set_graph_mode(mode);
        let seq = e.new_seq();
        let entries = |r: std::ops::Range<usize>| -> Vec<BatchEntry> {
            r.map(|i| BatchEntry::decode(seq, tok(i))).collect()
        };
        out[m].extend(e.step(&entries(0..PROMPT / 2)).expect("prefill"));
        out[m].extend(e.step(&entries(PROMPT / 2..PROMPT)).expect("prefill"));
        for i in PROMPT..PROMPT + DECODE_STEPS {
            out[m].extend(e.step(&entries(i..i + 1)).expect("decode"));
        }
        e.free_seq(seq);
    }
    let replays = e.backend.graph_stats().1;
    (out, replays, e.backend.table_reports())
}

fn first_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> Option<String> {
    for (i, (ra, rb)) in a.iter().zip(b).enumerate() {
        if let Some(j) = ra
            .iter()
            .zip(rb)
            .position(|(x, y)| x.to_bits() != y.to_bits())
        {
            return Some(format!("row {i}, logit {j}: {} vs {}", ra[j], rb[j]));
        }
    }
    (a.len() != b.len()).then(|| format!("{} rows vs {}", a.len(), b.len()))
}

#[test]
#[ignore = "needs CUDA"]
fn host_resident_ple_table_gives_the_device_resident_bits() {
    let has_ple = |f: &Arc<GgufFile>| {
        kestrel_model::spec_from_gguf(f)
            .expect("spec")
            .ple
            .is_some()
    };
    let mut files: Vec<(String, Arc<GgufFile>)> = oracle::oracle_files()
        .into_iter()
        .map(|o| {
            let f = Arc::new(GgufFile::open(&o.path).expect("fixture"));
            (format!("{} {}", o.model, o.kind), f)
        })
        .filter(|(_, f)| has_ple(f))
        .collect();
    assert!(files.len() >= 2, "the Gemma 4 PLE fixtures (f32, q8_0)");
    if let Ok(p) = std::env::var("KESTREL_PLE_GGUF") {
        files.push((
            p.clone(),
            Arc::new(GgufFile::open(&p).expect("KESTREL_PLE_GGUF")),
        ));
    }
    let mut failures = Vec::new();
    for (label, f) in &files {
        let t = std::time::Instant::now();
        let (dev, _, dev_rep) = run(f, TablePlacement::Device);
        let (host, replays, host_rep) = run(f, TablePlacement::Host);
        println!(
            "{label}: {} rows compared, {replays} graph replays ({:.1}s)\n  device: {}\n  host: {}",
            2 * dev[0].len(),
            t.elapsed().as_secs_f64(),
            dev_rep[0],
            host_rep[0]
        );
        if replays == 0 {
            failures.push(format!("{label}: no decode step was replayed from a graph"));
        }
        for (m, mode) in ["eager", "graphs"].iter().enumerate() {
            if let Some(d) = first_difference(&host[m], &dev[m]) {
                failures.push(format!("{label}, {mode}: host vs device table: {d}"));
            }
        }
        // Eager and replayed decode agree too (so both placements ran the same steps).
        if let Some(d) = first_difference(&host[0], &host[1]) {
            failures.push(format!("{label}: host table, eager vs graphs: {d}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
