//! The many-rows matmul path (ops/gemm.rs, kernels/convert.cu): bf16 weights and activations,
//! one cuBLAS GEMM with f32 accumulation.
//!
//! - The dequantize kernel against kestrel_gguf's reference dequantizer: exact (each value is
//!   `bf16::from_f32` of the reference f32, padding zero), every type, repacked rows included.
//! - GEMM outputs against the exact product of the dequantized weight (f64) and against the CPU
//!   backend's matmul, every type, shapes that are not multiples of any tile, row counts on both
//!   sides of the crossover, with and without a resident bf16 copy, one row to 130.
//!
//!   Tolerance, derived from bf16 rounding: bf16 keeps 8 significant bits, so rounding to
//!   nearest has a relative error of at most u = 2⁻⁸. Each product x·w then carries a relative
//!   error δ = δx + δw with |δ| ≤ 2u (+u²); f32 accumulation adds ~k·2⁻²⁴, negligible. With
//!   independent errors and random-sign products (random activations), the error of a sum
//!   Σ x·w·δ has a root-mean-square of at most 2u·sqrt(Σ (x·w)²), and so has the sum itself
//!   sqrt(Σ (x·w)²): the relative Frobenius error is at most `BF16_TOL` = 2u ≈ 7.8e-3 (a bound:
//!   uniform rounding errors give about u·sqrt(2/3) ≈ 3e-3; see the printed values). Against
//!   the CPU, whose own error (8-bit activation blocks) we measure against the same exact
//!   product, the triangle inequality gives ‖gpu − cpu‖ ≤ ‖gpu − exact‖ + ‖exact − cpu‖.
//! - The GEMM path inside CUDA graphs: a recorded matmul replays to the eager bits; a decode step
//!   of 40 sequences (bucket 64, GEMMs) replays to the bits of the same step run eagerly.
//! - A whole model: the last-token logits of a prompt run in one batch (GEMMs) against the same
//!   prompt fed token by token (matvecs), and the greedy continuations of both.
//! - Reports (not checks): GEMM vs matvec time by row count on the qwen3-8b matrices (the
//!   crossover), and the matmul time of a 512-token prefill of each benchmark preset.
//!
//! Run on a GPU machine: `cargo test --release -p kestrel-cuda --test gemm -- --include-ignored`.

mod common;

use std::cell::RefCell;

use common::synth::{real_shaped_models, tiny_models};
use common::*;
use half::bf16;
use kestrel_cpu::CpuBackend;
use kestrel_cuda::{CudaBackend, CudaTensor, CudaWeight, GemmRows, GraphMode};
use kestrel_engine::{Backend, BatchEntry, Engine, EngineConfig};
use kestrel_gguf::GgmlType;

const TYPES: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// u = 2⁻⁸ (bf16 round to nearest); the bound on the relative Frobenius error derived above.
const BF16_TOL: f64 = 2.0 / 256.0;

/// Columns for a type's test matrix: whole blocks, not a multiple of 64 (tile sizes), and for the
/// float types not even a multiple of 8 (so bf16 rows are padded).
fn cols_for(ty: GgmlType) -> usize {
    match ty.block_size() {
        1 => 1003,
        32 => 800,
        _ => 768 + 256 * 2, // 1280 = 5 blocks of 256
    }
}

/// Exact product of the dequantized weight with x (f64 sums).
fn exact_matmul(ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let mut deq = vec![0f32; cols];
    let mut out = vec![0f32; n * rows];
    for row in 0..rows {
        kestrel_gguf::quant::dequantize(ty, &w[row * rb..(row + 1) * rb], &mut deq).unwrap();
        for t in 0..n {
            out[t * rows + row] = deq
                .iter()
                .zip(&x[t * cols..(t + 1) * cols])
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>() as f32;
        }
    }
    out
}

fn check_dequant(g: &CudaBackend, label: &str) {
    let rows = 37;
    for (k, ty) in TYPES.into_iter().enumerate() {
        let cols = cols_for(ty);
        let mut r = rng(900 + k as u64);
        let bytes = random_weight(ty, rows, cols, 0.5, &mut r);
        let f = gguf(
            &[],
            vec![(
                "w".into(),
                vec![cols as u64, rows as u64],
                ty,
                bytes.clone(),
            )],
        );
        let w = g.upload(wref(&f, "w")).unwrap();
        let got = kestrel_cuda::ops::gemm::dequantize_to_host(g, &w);
        let ld = kestrel_cuda::ops::gemm::ld(cols);
        let rb = ty.row_bytes(cols as u64).unwrap() as usize;
        let mut want = vec![0f32; cols];
        let mut bad = 0usize;
        for row in 0..rows {
            kestrel_gguf::quant::dequantize(ty, &bytes[row * rb..(row + 1) * rb], &mut want)
                .unwrap();
            for c in 0..ld {
                let exp = if c < cols {
                    bf16::from_f32(want[c]).to_bits()
                } else {
                    0
                };
                if got[row * ld + c] != exp {
                    if bad < 5 {
                        println!(
                            "{label} {ty} [{row}][{c}]: GPU {:#06x}, reference {exp:#06x}",
                            got[row * ld + c]
                        );
                    }
                    bad += 1;
                }
            }
        }
        println!("dequant {label} {ty:>5} {rows}×{cols} (ld {ld}): {bad} differing values");
        assert_eq!(
            bad, 0,
            "{label} {ty}: dequantized bf16 differs from the reference"
        );
    }
}

#[test]
#[ignore = "needs CUDA"]
fn dequantize_to_bf16_is_exact_for_every_type() {
    let g = gpu();
    let _ = g.begin_step(&simple_step(vec![0; 1]));
    check_dequant(&g, "repacked");
    drop(g);
    // GGUF's own Q6_K / Q8_0 rows (the layout without the 16-byte matvecs).
    std::env::set_var("KESTREL_CUDA_FAST_MATVEC", "0");
    let g = gpu();
    std::env::remove_var("KESTREL_CUDA_FAST_MATVEC");
    let _ = g.begin_step(&simple_step(vec![0; 1]));
    check_dequant(&g, "gguf-layout");
}

/// One weight, many row counts: the output of `matmul` against the exact product and the CPU.
/// Returns failures.
fn check_matmul(
    g: &CudaBackend,
    cpu: &CpuBackend,
    ty: GgmlType,
    cached: bool,
    ns: &[usize],
    seed: u64,
) -> Vec<String> {
    let (rows, cols) = (300, cols_for(ty));
    let mut r = rng(seed);
    let wbytes = random_weight(ty, rows, cols, 1.0 / (cols as f32).sqrt(), &mut r);
    let f = gguf(
        &[],
        vec![(
            "w".into(),
            vec![cols as u64, rows as u64],
            ty,
            wbytes.clone(),
        )],
    );
    let (wg, wc) = (
        g.upload(wref(&f, "w")).unwrap(),
        cpu.upload(wref(&f, "w")).unwrap(),
    );
    if cached {
        let rep = g.cache_weights(&[&wg], 0);
        assert_eq!(rep.cached, 1, "{rep}");
    }
    let mut fails = Vec::new();
    for &n in ns {
        let _ = g.begin_step(&simple_step(vec![0; n]));
        let x = normals(&mut r, n * cols, 1.0);
        let xg = gpu_in(g, n, cols, &x);
        let mut xc = cpu.alloc(n, cols);
        xc.data.copy_from_slice(&x);
        let mut og = gpu_out(g, n, rows);
        let mut oc = cpu.alloc(n, rows);
        g.matmul(&wg, &xg, &mut og);
        cpu.matmul(&wc, &xc, &mut oc);
        let got = g.read(&og);
        let exact = exact_matmul(ty, &wbytes, rows, cols, &x, n);
        let gemm = kestrel_cuda::ops::gemm::takes(g, &wg, n);
        let (e_exact, e_cpu, e_cpu_exact) = (
            rel_err(&got, &exact),
            rel_err(&got, &oc.data),
            rel_err(&oc.data, &exact),
        );
        let path = if gemm { "gemm" } else { "matvec" };
        println!(
            "{ty:>5} {} n {n:>3} {path:>6}: vs exact {e_exact:.2e}  vs CPU {e_cpu:.2e}  (CPU vs exact {e_cpu_exact:.2e})",
            if cached { "cached " } else { "scratch" }
        );
        // The matvec path is ops.rs's business (its bound vs exact here; vs the CPU it is
        // checked up to 17 rows there).
        let (tol_exact, tol_cpu) = if gemm {
            (BF16_TOL, BF16_TOL + e_cpu_exact * 1.01)
        } else {
            (2e-2, f64::INFINITY)
        };
        if e_exact > tol_exact || e_cpu > tol_cpu {
            fails.push(format!(
                "{ty} n {n} {path} cached {cached}: vs exact {e_exact:.2e} (tol {tol_exact:.2e}), vs CPU {e_cpu:.2e} (tol {tol_cpu:.2e})"
            ));
        }
    }
    fails
}

#[test]
#[ignore = "needs CUDA"]
fn gemm_every_type_against_exact_and_cpu() {
    let (g, cpu) = (gpu(), CpuBackend::new());
    g.gemm_available().expect("cuBLAS");
    let mut fails = Vec::new();
    // Default crossover: both sides of each threshold, scratch and resident weights.
    g.set_gemm_rows(GemmRows::DEFAULT);
    let d = GemmRows::DEFAULT;
    let (c, s) = (d.cached.unwrap(), d.scratch.unwrap());
    let ns = [1, c - 1, c, s - 1, s, 130];
    for (k, ty) in TYPES.into_iter().enumerate() {
        fails.extend(check_matmul(&g, &cpu, ty, false, &ns, 300 + k as u64));
        fails.extend(check_matmul(&g, &cpu, ty, true, &ns, 400 + k as u64));
    }
    // Every row count through the GEMM path, down to one row.
    g.set_gemm_rows(GemmRows {
        cached: Some(1),
        scratch: Some(1),
    });
    for (k, ty) in TYPES.into_iter().enumerate() {
        fails.extend(check_matmul(
            &g,
            &cpu,
            ty,
            false,
            &[1, 2, 3, 7, 33],
            500 + k as u64,
        ));
    }
    assert!(
        fails.is_empty(),
        "GEMM out of tolerance:\n{}",
        fails.join("\n")
    );
}

#[test]
#[ignore = "needs CUDA"]
fn gemm_records_into_a_cuda_graph() {
    let g = gpu();
    g.gemm_available().expect("cuBLAS");
    g.reserve_activations(256 << 20).unwrap();
    g.set_gemm_rows(GemmRows {
        cached: Some(1),
        scratch: Some(1),
    });
    let (rows, cols, n) = (1000, 1280, 48);
    for (k, ty) in [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0]
        .into_iter()
        .enumerate()
    {
        let mut r = rng(600 + k as u64);
        let f = gguf(
            &[],
            vec![(
                "w".into(),
                vec![cols as u64, rows as u64],
                ty,
                random_weight(ty, rows, cols, 0.05, &mut r),
            )],
        );
        let w = g.upload(wref(&f, "w")).unwrap();
        let x = normals(&mut r, n * cols, 1.0);
        for cached in [false, true] {
            if cached {
                g.cache_weights(&[&w], 0);
            }
            let _ = g.begin_step(&simple_step(vec![0; n]));
            let xg = gpu_in(&g, n, cols, &x);
            let mut o = gpu_out(&g, n, rows);
            g.matmul(&w, &xg, &mut o);
            let eager = g.read(&o);
            g.fill(&mut o, f32::NAN);
            let o = RefCell::new(o);
            let graph = g
                .record(|| g.matmul(&w, &xg, &mut o.borrow_mut()))
                .expect("recording a GEMM");
            graph.launch().expect("replay");
            let replay = g.read(&o.borrow());
            let same = eager
                .iter()
                .zip(&replay)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            println!("{ty} cached {cached}: graph replay same bits as eager: {same}");
            assert!(
                same,
                "{ty} cached {cached}: a replayed GEMM differs from the eager one"
            );
        }
    }
}

fn engine(
    g: CudaBackend,
    f: &std::sync::Arc<kestrel_gguf::GgufFile>,
    n_ctx: usize,
    n_seqs: usize,
) -> Engine<CudaBackend> {
    let spec = kestrel_model::spec_from_gguf(f).expect("spec");
    let cfg = EngineConfig {
        n_ctx,
        kv_tokens: n_ctx.next_multiple_of(16) * n_seqs,
    };
    Engine::load(g, spec, f, cfg, &mut |_, _| {}).expect("engine")
}

/// Decode steps of 40 sequences (bucket 64: every layer matmul a GEMM, from scratch and from
/// resident weights) recorded as CUDA graphs and replayed give the bits of the same padded steps
/// run eagerly.
#[test]
#[ignore = "needs CUDA"]
fn decode_steps_with_gemms_replay_as_graphs() {
    let (n_seqs, prompt, steps) = (40usize, 5usize, 6usize);
    for (label, f, vocab) in tiny_models().into_iter().take(2) {
        for cached in [false, true] {
            let mut out = Vec::new();
            for mode in [GraphMode::Pad, GraphMode::On] {
                let g = gpu();
                g.gemm_available().expect("cuBLAS");
                g.set_gemm_rows(GemmRows::DEFAULT);
                g.set_graph_mode(mode);
                let mut e = engine(g, &f, prompt + steps + 2, n_seqs);
                if cached {
                    let rep = e.backend.cache_weights(&e.weights().layer_matrices(), 0);
                    assert!(rep.cached > 0, "{rep}");
                }
                let seqs: Vec<usize> = (0..n_seqs).map(|_| e.new_seq()).collect();
                for (k, &s) in seqs.iter().enumerate() {
                    let entries: Vec<BatchEntry> = (0..prompt)
                        .map(|i| BatchEntry {
                            seq: s,
                            token: ((k * 31 + i * 7) % vocab) as u32,
                            logits: i + 1 == prompt,
                            chunk: None,
                        })
                        .collect();
                    e.step(&entries).expect("prefill");
                }
                let mut rows = Vec::new();
                for i in 0..steps {
                    let entries: Vec<BatchEntry> = seqs
                        .iter()
                        .enumerate()
                        .map(|(k, &seq)| {
                            BatchEntry::decode(seq, ((k * 13 + i * 101) % vocab) as u32)
                        })
                        .collect();
                    rows.push(e.step(&entries).expect("decode").concat());
                }
                let (rec, rep) = e.backend.graph_stats();
                println!("{label} cached {cached} {mode:?}: graphs recorded {rec}, replays {rep}");
                if mode == GraphMode::On {
                    assert!(rec >= 1 && rep >= 1, "no graph was recorded and replayed");
                }
                out.push(rows);
            }
            for (i, (a, b)) in out[0].iter().zip(&out[1]).enumerate() {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{label} cached {cached} step {i}: graph replay differs from eager (max rel {:.2e})", max_rel(b, a));
            }
            println!("{label} cached {cached}: {steps} decode steps of {n_seqs} sequences, replays = eager bits");
        }
    }
}

/// Logits of a prompt run in one step (GEMMs), against the same prompt fed one token a step
/// (matvecs, which quantize activations to 8 bits). Each path differs from the exact model by
/// its rounding, cascaded through the layers: the matvec path's 8-bit activations put two
/// correct engines 1-4e-2 apart on the logits of these random-weight models (tests/model.rs,
/// whose bound is 5e-2), and the bf16 path adds its own, smaller noise (per matmul ~2.4e-3 vs
/// ~5-7e-3 for 8-bit blocks, gemm_every_type_against_exact_and_cpu). Independent noises add in
/// quadrature: sqrt(5² + (5·2.4/6)²)·1e-2 ≈ 5.4e-2, rounded up to `LOGIT_TOL` = 6e-2 (measured:
/// 1.6-4.9e-2). Then both sequences decode greedily; their tokens must agree except after a
/// near tie (the margin test of tests/model.rs).
const LOGIT_TOL: f64 = 6e-2;
const TIE_SIGMAS: f32 = 4.0;

#[test]
#[ignore = "needs CUDA"]
fn batched_prompt_matches_token_by_token() {
    let mut fails = Vec::new();
    let models: Vec<_> = tiny_models()
        .into_iter()
        .chain(real_shaped_models())
        .collect();
    for (label, f, vocab) in models {
        let plen = 100usize;
        let n_gen = 12usize;
        let g = gpu();
        g.gemm_available().expect("cuBLAS");
        g.set_gemm_rows(GemmRows::DEFAULT);
        let mut e = engine(g, &f, plen + n_gen + 2, 3);
        let prompt: Vec<u32> = (0..plen)
            .map(|i| ((i * 7919 + 17) % vocab) as u32)
            .collect();
        // Batched (GEMM) without, then with, resident bf16 weights.
        let mut batched = Vec::new();
        for cached in [false, true] {
            if cached {
                let rep = e.backend.cache_weights(&e.weights().layer_matrices(), 0);
                println!("{label}: {rep}");
            }
            let s = e.new_seq();
            let entries: Vec<BatchEntry> = BatchEntry::run(s, &prompt, true);
            batched.push((s, e.step(&entries).expect("batched prompt").remove(0)));
        }
        let e_cache = rel_err(&batched[1].1, &batched[0].1);
        println!("{label}: batched prompt, resident vs scratch weights: rel err {e_cache:.2e}");
        if e_cache > 1e-6 {
            fails.push(format!(
                "{label}: resident vs scratch bf16 weights differ by {e_cache:.2e}"
            ));
        }
        // Token by token (matvecs).
        let t = e.new_seq();
        let mut lt = Vec::new();
        for &token in &prompt {
            lt = e
                .step(&[BatchEntry::decode(t, token)])
                .expect("token step")
                .remove(0);
        }
        let (s, mut lb) = batched.pop().expect("two runs");
        let err = rel_err(&lb, &lt);
        println!("{label}: last-token logits, one batch of {plen} vs token by token: rel err {err:.3e} (tol {LOGIT_TOL:.0e})");
        if err > LOGIT_TOL {
            fails.push(format!(
                "{label}: batched vs token-by-token logits {err:.3e}"
            ));
        }
        // Greedy continuations, one token a step on both sequences.
        let (mut tb, mut tt) = (Vec::new(), Vec::new());
        for i in 0..n_gen {
            let (ab, at) = (argmax(&lb) as u32, argmax(&lt) as u32);
            tb.push(ab);
            tt.push(at);
            if ab != at {
                let margin = lt[at as usize] - lt[ab as usize];
                if margin <= TIE_SIGMAS * rms_diff(&lt, &lb) {
                    println!(
                        "{label}: near tie at token {i} (margin {margin:.4}); comparison stops"
                    );
                    break;
                }
                fails.push(format!(
                    "{label}: token {i}: batched picks {ab}, token-by-token {at} (margin {margin:.4}, not a near tie)"
                ));
                break;
            }
            lb = e
                .step(&[BatchEntry::decode(s, ab)])
                .expect("decode")
                .remove(0);
            lt = e
                .step(&[BatchEntry::decode(t, at)])
                .expect("decode")
                .remove(0);
        }
        println!("{label}: greedy after batched prompt {tb:?}\n{label}: greedy after token by token {tt:?}");
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// Not a check: GEMM (resident bf16 weight, and dequantized per call) against the matvecs
/// (quantize + matvec) by row count, on the matrices of a qwen3-8b layer; the crossover
/// `GemmRows::DEFAULT` comes from here. Timed as CUDA-graph replays over copies of the weight
/// (reads from HBM, not L2).
#[test]
#[ignore = "needs CUDA"]
fn gemm_crossover_report() {
    let g = gpu();
    g.gemm_available().expect("cuBLAS");
    // Scratch allocated inside a recording must come from the arena (no cuMemAlloc in capture).
    g.reserve_activations(1 << 30).unwrap();
    let cases: [(&str, GgmlType, usize, usize); 4] = [
        ("q/o proj 8B", GgmlType::Q4_K, 4096, 4096),
        ("gate/up 8B", GgmlType::Q4_K, 12288, 4096),
        ("down 8B", GgmlType::Q6_K, 4096, 12288),
        ("k/v proj 8B", GgmlType::Q4_K, 1024, 4096),
    ];
    println!("| matrix | type | rows | matvec µs | GEMM resident µs | GEMM scratch µs | resident TFLOP/s |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for (label, ty, rows, cols) in cases {
        let mut r = rng(8);
        let bytes = random_weight(ty, rows, cols, 0.02, &mut r);
        let copies = (400_000_000 / (rows * cols * 2)).clamp(1, 16);
        let f = gguf(
            &[],
            vec![("w".into(), vec![cols as u64, rows as u64], ty, bytes)],
        );
        let plain: Vec<CudaWeight> = (0..copies)
            .map(|_| g.upload(wref(&f, "w")).unwrap())
            .collect();
        let resident: Vec<CudaWeight> = (0..copies)
            .map(|_| g.upload(wref(&f, "w")).unwrap())
            .collect();
        let rep = g.cache_weights(&resident.iter().collect::<Vec<_>>(), 0);
        assert_eq!(rep.cached, copies);
        for n in [1usize, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 512] {
            let _ = g.begin_step(&simple_step(vec![0; n]));
            let x = gpu_in(&g, n, cols, &normals(&mut r, n * cols, 1.0));
            let out = RefCell::new(gpu_out(&g, n, rows));
            let time = |ws: &[CudaWeight], gemm: bool| {
                g.set_gemm_rows(if gemm {
                    GemmRows {
                        cached: Some(1),
                        scratch: Some(1),
                    }
                } else {
                    GemmRows::OFF
                });
                g.matmul(&ws[0], &x, &mut out.borrow_mut());
                graph_time(&g, (4 * copies).max(16), |i| {
                    g.matmul(&ws[i % copies], &x, &mut out.borrow_mut())
                })
            };
            let (mv, res, scr) = (
                time(&plain, false),
                time(&resident, true),
                time(&plain, true),
            );
            println!(
                "| {label} | {ty} | {n} | {:.1} | {:.1} | {:.1} | {:.0} |",
                mv * 1e6,
                res * 1e6,
                scr * 1e6,
                2.0 * (rows * cols * n) as f64 / res / 1e12
            );
        }
    }
    g.set_gemm_rows(GemmRows::DEFAULT);
}

/// Not a check: the matmul time of a 512-token prefill of each benchmark preset (every layer's
/// projections as GEMMs on resident bf16 weights, bf16 conversion of their inputs included; the
/// LM head is one row), from CUDA-graph replays of one layer's matmuls times the layer count.
/// Divided into the measured pp512 time, it gives the matmul share of a prefill.
#[test]
#[ignore = "needs CUDA"]
fn prefill_matmul_report() {
    let g = gpu();
    g.gemm_available().expect("cuBLAS");
    g.reserve_activations(1 << 30).unwrap();
    g.set_gemm_rows(GemmRows {
        cached: Some(1),
        scratch: Some(1),
    });
    // (preset, layers, d_model, q_dim, kv_dim, n_ff)
    let presets: [(&str, usize, usize, usize, usize, usize); 5] = [
        ("qwen3-0.6b", 28, 1024, 2048, 1024, 3072),
        ("qwen3-8b", 36, 4096, 4096, 1024, 12288),
        ("llama3-8b", 32, 4096, 4096, 1024, 14336),
        ("gemma3-4b", 34, 2560, 2048, 1024, 10240),
        ("gemma3-12b", 48, 3840, 4096, 2048, 15360),
    ];
    let n = 512;
    println!("| preset | layer matmul FLOP (512 tokens) | µs per layer | ms per pp512 | TFLOP/s |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, layers, d, qd, kvd, ff) in presets {
        let mut r = rng(9);
        // (rows, cols) of q, k, v, o, gate, up, down
        let shapes = [
            (qd, d),
            (kvd, d),
            (kvd, d),
            (d, qd),
            (ff, d),
            (ff, d),
            (d, ff),
        ];
        let tensors: Vec<_> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(rows, cols))| {
                (
                    format!("w{i}"),
                    vec![cols as u64, rows as u64],
                    GgmlType::Q4_K,
                    random_weight(GgmlType::Q4_K, rows, cols, 0.02, &mut r),
                )
            })
            .collect();
        let f = gguf(&[], tensors);
        // Enough layers' copies that the weights stream from HBM.
        let layer_bytes: usize = shapes.iter().map(|(a, b)| a * b * 2).sum();
        let copies = (300_000_000 / layer_bytes).clamp(1, 8);
        let ws: Vec<Vec<CudaWeight>> = (0..copies)
            .map(|_| {
                (0..7)
                    .map(|i| g.upload(wref(&f, &format!("w{i}"))).unwrap())
                    .collect()
            })
            .collect();
        let all: Vec<&CudaWeight> = ws.iter().flatten().collect();
        g.cache_weights(&all, 0);
        let _ = g.begin_step(&simple_step(vec![0; n]));
        let h = gpu_in(&g, n, d, &normals(&mut r, n * d, 1.0));
        let a = gpu_in(&g, n, qd, &normals(&mut r, n * qd, 1.0));
        let act = gpu_in(&g, n, ff, &normals(&mut r, n * ff, 1.0));
        let outs: RefCell<Vec<CudaTensor>> = RefCell::new(
            shapes
                .iter()
                .map(|&(rows, _)| gpu_out(&g, n, rows))
                .collect(),
        );
        let layer = |c: usize| {
            let w = &ws[c % copies];
            let mut o = outs.borrow_mut();
            // Inputs as in forward: h for q/k/v and gate/up, a for o, act for down. Writing a
            // tensor between uses forgets the conversion, as the norm and activation would.
            for (i, x) in [
                (0, &h),
                (1, &h),
                (2, &h),
                (3, &a),
                (4, &h),
                (5, &h),
                (6, &act),
            ] {
                g.matmul(&w[i], x, &mut o[i]);
            }
        };
        layer(0);
        let s = graph_time(&g, 4 * copies, layer);
        let flop: f64 = shapes.iter().map(|(a, b)| 2.0 * (a * b * n) as f64).sum();
        println!(
            "| {name} | {:.1} G | {:.1} | {:.2} | {:.0} |",
            flop / 1e9,
            s * 1e6,
            s * layers as f64 * 1e3,
            flop / s / 1e12
        );
    }
    g.set_gemm_rows(GemmRows::DEFAULT);
}
