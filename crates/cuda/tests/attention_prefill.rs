//! The tensor-core prefill attention kernel (kernels/attention_prefill.cu) against exact attention
//! (f64 over the same f16-rounded Q, K and V) and against the CPU backend's attention, on random
//! non-zero Q/K/V written through `kv_write` into scattered cache blocks, outputs poisoned with NaN.
//!
//! Tolerance: ‖gpu − exact‖ / ‖exact‖ ≤ 1e-3. The kernel takes Q, K, V in f16 (as the CPU does),
//! accumulates Q·K and P·V in f32 on the tensor cores and rounds the softmax weights P to f16 for
//! the P·V product: a relative error of 2^-12 per weight, ~3e-4 on the output. Against the CPU
//! (whose V accumulator is an f16 chain, llama.cpp's CPU rounding) the bound is the CPU's own
//! distance from exact plus 1e-3.
//!
//! Run on a GPU machine: `cargo test --release -p kestrel-cuda --test attention_prefill --
//! --include-ignored --test-threads=1 --nocapture`.

mod common;

use std::cell::RefCell;

use common::*;
use kestrel_cpu::CpuBackend;
use kestrel_cuda::{CudaBackend, CudaKv};
use kestrel_engine::{AttnGeom, Backend, Chunk, StepInfo};
use rand::rngs::StdRng;

/// A sequence's cache: its block table and the K/V rows written so far, by position.
struct Seq {
    table: Vec<u32>,
    k: Vec<f32>,
    v: Vec<f32>,
    len: usize,
}

struct Case {
    label: &'static str,
    n_head: usize,
    n_kv: usize,
    hd: usize,
    window: Option<usize>,
    /// Sequences' capacities (tokens).
    caps: Vec<usize>,
    /// Steps: (sequence, tokens appended) chunks, in token order.
    steps: Vec<Vec<(usize, usize)>>,
    /// `set_prefill_min` for the case (1: every run takes the prefill kernel).
    min: usize,
}

fn step_info(seqs: &[Seq], chunks: &[(usize, usize)]) -> StepInfo {
    let mut s = StepInfo::default();
    let mut len: Vec<usize> = seqs.iter().map(|q| q.len).collect();
    for &(q, n) in chunks {
        let sq = &seqs[q];
        for p in len[q]..len[q] + n {
            s.tokens.push(0);
            s.positions.push(p as u32);
            s.slots.push(sq.table[p / 16] * 16 + (p % 16) as u32);
            s.seq_index.push(q as u32);
        }
        len[q] += n;
    }
    s.block_tables = seqs.iter().map(|q| q.table.clone()).collect();
    s.logit_rows = vec![s.tokens.len() as u32 - 1];
    s
}

/// Exact attention (f64) of the step's tokens over their sequences' f16-rounded K/V.
fn exact(seqs: &[Seq], s: &StepInfo, q: &[f32], geom: AttnGeom) -> Vec<f32> {
    let (nh, hd) = (geom.n_head, geom.head_dim);
    let kv_dim = geom.n_kv_head * hd;
    let f16r = |v: f32| half::f16::from_f32(v).to_f64();
    let mut out = vec![0f32; s.tokens.len() * nh * hd];
    for t in 0..s.tokens.len() {
        let sq = &seqs[s.seq_index[t] as usize];
        let p = s.positions[t] as usize;
        let lo = geom.window.map_or(0, |w| (p + 1).saturating_sub(w));
        for h in 0..nh {
            let kvh = h / (nh / geom.n_kv_head);
            let qh: Vec<f64> = (0..hd).map(|d| f16r(q[(t * nh + h) * hd + d])).collect();
            let sc: Vec<f64> = (lo..=p)
                .map(|j| {
                    let k = &sq.k[j * kv_dim + kvh * hd..][..hd];
                    qh.iter().zip(k).map(|(a, b)| a * f16r(*b)).sum::<f64>() * geom.scale as f64
                })
                .collect();
            let m = sc.iter().cloned().fold(f64::MIN, f64::max);
            let w: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = w.iter().sum();
            let o = &mut out[(t * nh + h) * hd..][..hd];
            let mut acc = vec![0f64; hd];
            for (j, wj) in (lo..=p).zip(&w) {
                let v = &sq.v[j * kv_dim + kvh * hd..][..hd];
                for (a, x) in acc.iter_mut().zip(v) {
                    *a += wj * f16r(*x);
                }
            }
            for (o, a) in o.iter_mut().zip(&acc) {
                *o = (a / z) as f32;
            }
        }
    }
    out
}

#[test]
#[ignore = "needs CUDA"]
fn prefill_attention_matches_exact_and_cpu() {
    let (g, cpu) = (gpu(), CpuBackend::new());
    let c =
        |label, n_head, n_kv, hd, window, caps: &[usize], steps: &[&[(usize, usize)]], min| Case {
            label,
            n_head,
            n_kv,
            hd,
            window,
            caps: caps.to_vec(),
            steps: steps.iter().map(|s| s.to_vec()).collect(),
            min,
        };
    let cases = [
        c("hd64 gqa1 prompt 1", 4, 4, 64, None, &[1], &[&[(0, 1)]], 1),
        c(
            "hd64 gqa1 prompt 100",
            8,
            8,
            64,
            None,
            &[100],
            &[&[(0, 100)]],
            1,
        ),
        c(
            "hd128 gqa4 prompt 511",
            32,
            8,
            128,
            None,
            &[511],
            &[&[(0, 511)]],
            1,
        ),
        c(
            "hd128 gqa8 window 100, prompt 1000",
            8,
            1,
            128,
            Some(100),
            &[1000],
            &[&[(0, 1000)]],
            1,
        ),
        c(
            "hd256 gqa4 window 37, prompt 17 then 100",
            8,
            2,
            256,
            Some(37),
            &[117],
            &[&[(0, 17)], &[(0, 100)]],
            1,
        ),
        c(
            "hd256 gqa1 window 64, prompt 200",
            4,
            4,
            256,
            Some(64),
            &[200],
            &[&[(0, 200)]],
            1,
        ),
        c(
            "hd512 gqa8 prompt 17 then 150",
            8,
            1,
            512,
            None,
            &[167],
            &[&[(0, 17)], &[(0, 150)]],
            1,
        ),
        c(
            "hd512 gqa1 window 50, two sequences",
            4,
            4,
            512,
            Some(50),
            &[60, 45],
            &[&[(0, 60), (1, 45)]],
            1,
        ),
        // The default split: runs of >= 16 tokens prefill, the rest (a decode token, a short
        // chunk) the decode kernel, in one step.
        c(
            "hd128 gqa4 mixed step (default threshold)",
            16,
            4,
            128,
            None,
            &[41, 70, 20],
            &[&[(0, 40), (1, 30)], &[(0, 1), (1, 33), (2, 7), (1, 7)]],
            kestrel_cuda::ops::attention::PREFILL_MIN_TOKENS,
        ),
    ];
    for (ci, case) in cases.iter().enumerate() {
        g.set_prefill_min(case.min);
        let mut r = rng(7000 + ci as u64);
        let kv_dim = case.n_kv * case.hd;
        let (tbl, n_slots) = scattered_tables(&case.caps, &mut r);
        let mut seqs: Vec<Seq> = tbl
            .into_iter()
            .map(|table| Seq {
                table,
                k: Vec::new(),
                v: Vec::new(),
                len: 0,
            })
            .collect();
        let mut kvg = g.alloc_kv(n_slots, kv_dim).unwrap();
        let mut kvc = cpu.alloc_kv(n_slots, kv_dim).unwrap();
        let geom = AttnGeom {
            n_head: case.n_head,
            n_kv_head: case.n_kv,
            head_dim: case.hd,
            window: case.window,
            scale: 1.0 / (case.hd as f32).sqrt(),
        };
        for (si, chunks) in case.steps.iter().enumerate() {
            let s = step_info(&seqs, chunks);
            let n = s.tokens.len();
            let (sg, sc) = (g.begin_step(&s), cpu.begin_step(&s));
            if case.min == 1 {
                assert_eq!(sg.n_decode, 0, "{}: every run prefills", case.label);
            }
            let (kx, vx) = (
                normals(&mut r, n * kv_dim, 1.5),
                normals(&mut r, n * kv_dim, 1.0),
            );
            g.kv_write(
                &gpu_in(&g, n, kv_dim, &kx),
                &gpu_in(&g, n, kv_dim, &vx),
                &mut kvg,
                &sg,
            );
            cpu.kv_write(
                &cpu_in(&cpu, n, kv_dim, &kx),
                &cpu_in(&cpu, n, kv_dim, &vx),
                &mut kvc,
                &sc,
            );
            // Append the rows to the sequences (chunks are in token order).
            let mut t = 0;
            for &(q, cnt) in chunks {
                let sq = &mut seqs[q];
                sq.k.extend_from_slice(&kx[t * kv_dim..(t + cnt) * kv_dim]);
                sq.v.extend_from_slice(&vx[t * kv_dim..(t + cnt) * kv_dim]);
                t += cnt;
            }
            let qd = case.n_head * case.hd;
            let q = normals(&mut r, n * qd, 1.5);
            let qg = gpu_in(&g, n, qd, &q);
            let mut oc = cpu.alloc(n, qd);
            oc.data.fill(f32::NAN);
            cpu.attention(&cpu_in(&cpu, n, qd, &q), &kvc, geom, &sc, &mut oc);
            let want = exact(&seqs, &s, &q, geom);
            for &(q, cnt) in chunks {
                seqs[q].len += cnt;
            }
            let e_cpu = rel_err(&oc.data, &want);
            // Every compiled configuration of the kernel for this head dim.
            let cfgs = kestrel_cuda::ops::attention::prefill_cfgs(case.hd);
            for v in (0..cfgs.len()).map(Some).chain([None]) {
                let name = v.map_or("auto", |i| cfgs[i].name);
                g.set_prefill_variant(v);
                let mut og = g.alloc(n, qd);
                g.fill(&mut og, f32::NAN);
                g.attention(&qg, &kvg, geom, &sg, &mut og);
                let got = g.read(&og);
                let (e_gpu, e_gc) = (rel_err(&got, &want), rel_err(&got, &oc.data));
                println!(
                    "{} [{}] (step {si}: {n} tokens, {} prefill runs, {} decode): vs exact GPU {e_gpu:.2e}, CPU {e_cpu:.2e}; GPU vs CPU {e_gc:.2e}",
                    case.label,
                    name,
                    sg.prefill_lens.len(),
                    sg.n_decode,
                );
                assert!(e_gpu <= 1e-3, "{} {name}: GPU vs exact {e_gpu}", case.label);
                assert!(
                    e_gc <= e_cpu + 1e-3,
                    "{} {name}: GPU vs CPU {e_gc} (CPU vs exact {e_cpu})",
                    case.label
                );
            }
            g.set_prefill_variant(None);
        }
    }
}

/// One sequence whose cache holds `ctx` random K/V rows (positions 0..ctx).
fn filled_cache(g: &CudaBackend, kv_dim: usize, ctx: usize, r: &mut StdRng) -> (CudaKv, Vec<u32>) {
    let table: Vec<u32> = (0..ctx.div_ceil(16) as u32).collect();
    let mut kv = g.alloc_kv(table.len() * 16, kv_dim).unwrap();
    let mut s = StepInfo::default();
    for p in 0..ctx {
        s.tokens.push(0);
        s.positions.push(p as u32);
        s.slots.push(p as u32);
        s.seq_index.push(0);
    }
    s.block_tables = vec![table.clone()];
    s.logit_rows = vec![0];
    let sg = g.begin_step(&s);
    g.kv_write(
        &gpu_in(g, ctx, kv_dim, &normals(r, ctx * kv_dim, 1.5)),
        &gpu_in(g, ctx, kv_dim, &normals(r, ctx * kv_dim, 1.0)),
        &mut kv,
        &sg,
    );
    g.synchronize();
    (kv, table)
}

/// Seconds per attention call for a run of `n` query tokens at positions `start..start + n` of
/// one sequence, with the prefill kernel for runs of >= `min` tokens.
#[allow(clippy::too_many_arguments)]
fn time_run(
    g: &CudaBackend,
    kv: &CudaKv,
    table: &[u32],
    geom: AttnGeom,
    start: usize,
    n: usize,
    min: usize,
    reps: usize,
    r: &mut StdRng,
) -> f64 {
    g.set_prefill_min(min);
    // Room for Q, the output and the decode kernel's split partials, so nothing allocates
    // while the graph is recorded.
    let qd = geom.n_head * geom.head_dim;
    let splits = kestrel_cuda::ops::attention::splits(start + n);
    let part = n * geom.n_head * splits * (geom.head_dim + 2) * 4;
    g.reserve_activations(2 * n * qd * 4 + part + (64 << 20))
        .expect("arena");
    let s = StepInfo {
        tokens: vec![0; n],
        positions: (start as u32..(start + n) as u32).collect(),
        slots: (start as u32..(start + n) as u32).collect(),
        seq_index: vec![0; n],
        block_tables: vec![table.to_vec()],
        logit_rows: vec![n as u32 - 1],
        chunks: Vec::new(), // runs split by length (`min`)
    };
    let sg = g.begin_step(&s);
    let q = gpu_in(g, n, qd, &normals(r, n * qd, 1.5));
    let out = RefCell::new(g.alloc(n, qd));
    graph_time(g, reps, |_| {
        g.attention(&q, kv, geom, &sg, &mut out.borrow_mut())
    })
}

/// Causal attention FLOPs (2 per multiply-add, Q·K and P·V) of query positions start..start+n.
fn flops(geom: AttnGeom, start: usize, n: usize) -> f64 {
    let keys: usize = (start..start + n)
        .map(|p| geom.window.map_or(p + 1, |w| (p + 1).min(w)))
        .sum();
    4.0 * (geom.n_head * geom.head_dim * keys) as f64
}

/// Not a check: the prefill kernel alone on model shapes (µs, achieved TFLOP/s against the
/// H200's ~800 dense f16 tensor-core peak), the decode kernel on the same work, and the run
/// length where the prefill kernel starts to win (`PREFILL_MIN_TOKENS`).
#[test]
#[ignore = "needs CUDA"]
fn prefill_attention_report() {
    let g = gpu();
    let mut r = rng(99);
    let geom = |n_head, n_kv_head, head_dim, window: Option<usize>| AttnGeom {
        n_head,
        n_kv_head,
        head_dim,
        window,
        scale: 1.0 / (head_dim as f32).sqrt(),
    };
    let shapes = [
        ("qwen3-8b 32/8×128", geom(32, 8, 128, None), 512usize),
        ("qwen3-8b 32/8×128", geom(32, 8, 128, None), 4096),
        (
            "gemma3-4b sliding 8/4×256 w1024",
            geom(8, 4, 256, Some(1024)),
            4096,
        ),
        ("gemma3-4b global 8/4×256", geom(8, 4, 256, None), 4096),
        ("gemma4 global 8/2×512", geom(8, 2, 512, None), 4096),
        (
            "gemma4 sliding 8/2×256 w512",
            geom(8, 2, 256, Some(512)),
            4096,
        ),
    ];
    println!("| shape | tokens | kernel | prefill µs | TFLOP/s | % of 800 | decode kernel µs | speedup |");
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for (label, gm, n) in shapes {
        let (kv, table) = filled_cache(&g, gm.n_kv_head * gm.head_dim, n, &mut r);
        let td = time_run(&g, &kv, &table, gm, 0, n, usize::MAX, 2, &mut r);
        let cfgs = kestrel_cuda::ops::attention::prefill_cfgs(gm.head_dim);
        for v in (0..cfgs.len()).map(Some).chain([None]) {
            g.set_prefill_variant(v);
            let tp = time_run(&g, &kv, &table, gm, 0, n, 1, 10, &mut r);
            let tf = flops(gm, 0, n) / tp / 1e12;
            println!(
                "| {label} | {n} | {} | {:.1} | {tf:.1} | {:.0}% | {:.1} | {:.1}× |",
                v.map_or("auto (default)", |i| cfgs[i].name),
                tp * 1e6,
                tf / 8.0,
                td * 1e6,
                td / tp
            );
        }
        g.set_prefill_variant(None);
    }
    // A 4096-token prompt in 512-token chunks (`kestrel bench` default ubatch): every chunk
    // attends to the cache before it.
    println!();
    println!("| shape | 4096 tokens in 512-token chunks: prefill µs (sum of 8) | TFLOP/s | decode kernel µs |");
    println!("| --- | ---: | ---: | ---: |");
    for (label, gm) in [
        ("qwen3-8b 32/8×128", geom(32, 8, 128, None)),
        (
            "gemma3-4b sliding 8/4×256 w1024",
            geom(8, 4, 256, Some(1024)),
        ),
        ("gemma3-4b global 8/4×256", geom(8, 4, 256, None)),
    ] {
        let (kv, table) = filled_cache(&g, gm.n_kv_head * gm.head_dim, 4096, &mut r);
        let (mut tp, mut td, mut fl) = (0.0, 0.0, 0.0);
        for c in 0..8 {
            tp += time_run(&g, &kv, &table, gm, 512 * c, 512, 1, 10, &mut r);
            td += time_run(&g, &kv, &table, gm, 512 * c, 512, usize::MAX, 2, &mut r);
            fl += flops(gm, 512 * c, 512);
        }
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} |",
            tp * 1e6,
            fl / tp / 1e12,
            td * 1e6
        );
    }
    // The same for each configuration of the qwen3 kernel (sum over the 8 chunks).
    let gm = geom(32, 8, 128, None);
    let (kv, table) = filled_cache(&g, gm.n_kv_head * gm.head_dim, 4096, &mut r);
    for (vi, cfg) in kestrel_cuda::ops::attention::prefill_cfgs(128)
        .iter()
        .enumerate()
    {
        g.set_prefill_variant(Some(vi));
        let tp: f64 = (0..8)
            .map(|c| time_run(&g, &kv, &table, gm, 512 * c, 512, 1, 10, &mut r))
            .sum();
        println!("| qwen3-8b chunked, {} | {:.1} | | |", cfg.name, tp * 1e6);
    }
    g.set_prefill_variant(None);
    drop(kv);
    // Threshold: a run of n new tokens after `ctx` cached ones, each kernel.
    println!();
    println!("| qwen3-8b 32/8×128: run of n tokens after ctx | prefill µs | decode kernel µs |");
    println!("| --- | ---: | ---: |");
    let gm = geom(32, 8, 128, None);
    for ctx in [512usize, 4096] {
        let (kv, table) = filled_cache(&g, gm.n_kv_head * gm.head_dim, ctx + 64, &mut r);
        for n in [1usize, 2, 4, 8, 16, 32, 64] {
            let tp = time_run(&g, &kv, &table, gm, ctx, n, 1, 50, &mut r);
            let td = time_run(&g, &kv, &table, gm, ctx, n, usize::MAX, 50, &mut r);
            println!("| n {n} after {ctx} | {:.1} | {:.1} |", tp * 1e6, td * 1e6);
        }
    }
    g.set_prefill_min(kestrel_cuda::ops::attention::PREFILL_MIN_TOKENS);
}

/// A token's prefill attention is the same bits whatever chunk, step and tile it is computed in
/// (and whichever configuration of the kernel runs): one 100-token run against the same tokens
/// in three chunks over three steps, one shared with another sequence's decode token. What
/// `CudaBackend::chunk_invariant` promises for prefix reuse.
#[test]
#[ignore = "needs CUDA"]
fn prefill_rows_are_the_same_bits_in_any_chunk() {
    let g = gpu();
    g.set_prefill_min(8);
    for (k, (n_head, n_kv, hd, window)) in [
        (16usize, 4usize, 128usize, Some(37usize)),
        (8, 1, 512, None),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = rng(500 + k as u64);
        let kv_dim = n_kv * hd;
        let qd = n_head * hd;
        let (tbl, n_slots) = scattered_tables(&[100, 20], &mut r);
        let mut kv = g.alloc_kv(n_slots, kv_dim).unwrap();
        // Fill both sequences' caches: 100 tokens of A, 20 of B.
        let seqs: Vec<Seq> = tbl
            .into_iter()
            .map(|table| Seq {
                table,
                k: Vec::new(),
                v: Vec::new(),
                len: 0,
            })
            .collect();
        let fill = step_info(&seqs, &[(0, 100), (1, 20)]);
        let sf = g.begin_step(&fill);
        g.kv_write(
            &gpu_in(&g, 120, kv_dim, &normals(&mut r, 120 * kv_dim, 1.5)),
            &gpu_in(&g, 120, kv_dim, &normals(&mut r, 120 * kv_dim, 1.0)),
            &mut kv,
            &sf,
        );
        let q = normals(&mut r, 101 * qd, 1.5);
        let geom = AttnGeom {
            n_head,
            n_kv_head: n_kv,
            head_dim: hd,
            window,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        // Attention of sequence A's tokens [start, start + len) as one chunk, with B's token 19
        // appended when `with_b`.
        let run = |start: usize, len: usize, with_b: bool| -> Vec<f32> {
            let mut s = StepInfo::default();
            for p in start..start + len {
                s.tokens.push(0);
                s.positions.push(p as u32);
                s.slots.push(seqs[0].table[p / 16] * 16 + (p % 16) as u32);
                s.seq_index.push(0);
                s.chunks.push(Chunk {
                    len: len as u32,
                    index: (p - start) as u32,
                });
            }
            let mut qq = q[start * qd..(start + len) * qd].to_vec();
            if with_b {
                s.tokens.push(0);
                s.positions.push(19);
                s.slots.push(seqs[1].table[1] * 16 + 3);
                s.seq_index.push(1);
                s.chunks.push(Chunk::SINGLE);
                qq.extend_from_slice(&q[100 * qd..]);
            }
            s.block_tables = seqs.iter().map(|q| q.table.clone()).collect();
            s.logit_rows = vec![0];
            let n = s.tokens.len();
            let sg = g.begin_step(&s);
            let mut o = g.alloc(n, qd);
            g.fill(&mut o, f32::NAN);
            g.attention(&gpu_in(&g, n, qd, &qq), &kv, geom, &sg, &mut o);
            let mut out = g.read(&o);
            out.truncate(len * qd);
            out
        };
        let cfgs = kestrel_cuda::ops::attention::prefill_cfgs(hd);
        g.set_prefill_variant(None);
        let whole = run(0, 100, false);
        assert!(whole.iter().all(|x| x.is_finite()), "unwritten output");
        for v in (0..cfgs.len()).map(Some).chain([None]) {
            g.set_prefill_variant(v);
            let mut parts = run(0, 30, false);
            parts.extend(run(30, 47, true));
            parts.extend(run(77, 23, false));
            let differ = parts
                .iter()
                .zip(&whole)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            println!(
                "hd {hd} window {window:?} [{}]: {differ} of {} values differ from the one-run result",
                v.map_or("auto", |i| cfgs[i].name),
                whole.len()
            );
            assert_eq!(differ, 0, "hd {hd}: chunked prefill changed bits");
        }
        g.set_prefill_variant(None);
    }
    g.set_prefill_min(kestrel_cuda::ops::attention::PREFILL_MIN_TOKENS);
}
