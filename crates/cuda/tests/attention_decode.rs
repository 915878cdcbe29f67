//! The decode attention kernels (kernels/attention.cu: the exact f16 chain up to
//! `EXACT_KEYS` keys, flash-decoding beyond) against the CPU backend's attention and exact f64
//! attention over the same f16 Q/K/V, on random non-zero inputs with NaN-poisoned outputs; the
//! batch invariance the server relies on (a token's bits alone = in any batch); and a timing
//! report of the kernels alone.
//!
//! Run on a GPU machine: `cargo test --release -p kestrel-cuda --test attention_decode --
//! --include-ignored --test-threads=1`.

mod common;

use std::cell::RefCell;

use common::*;
use kestrel_cpu::ops::attention::KvPool;
use kestrel_cpu::CpuBackend;
use kestrel_cuda::ops::attention::{splits, token_splits, EXACT_KEYS};
use kestrel_cuda::{CudaBackend, CudaKv};
use kestrel_engine::{AttnGeom, Backend, StepInfo};
use rand::rngs::StdRng;
use rand::Rng;

/// One sequence per length, blocks scattered over the pool, every position's K/V written (on
/// the GPU, and on the CPU when given) in one step. `kx`/`vx` row `base[s] + p` is position p of
/// sequence s.
struct Caches {
    kvg: CudaKv,
    kvc: Option<KvPool>,
    tables: Vec<Vec<u32>>,
    base: Vec<usize>,
    kx: Vec<f32>,
    vx: Vec<f32>,
}

fn caches(
    g: &CudaBackend,
    cpu: Option<&CpuBackend>,
    r: &mut StdRng,
    kv_dim: usize,
    lens: &[usize],
) -> Caches {
    let n_blocks: usize = lens.iter().map(|l| l.div_ceil(16)).sum();
    let mut perm: Vec<u32> = (0..n_blocks as u32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, r.gen_range(0..=i));
    }
    let (mut tables, mut base, mut at, mut row) = (Vec::new(), Vec::new(), 0, 0);
    for &l in lens {
        tables.push(perm[at..at + l.div_ceil(16)].to_vec());
        at += l.div_ceil(16);
        base.push(row);
        row += l;
    }
    let mut fill = StepInfo::default();
    for (s, &l) in lens.iter().enumerate() {
        for p in 0..l {
            fill.tokens.push(0);
            fill.positions.push(p as u32);
            fill.slots.push(tables[s][p / 16] * 16 + (p % 16) as u32);
            fill.seq_index.push(s as u32);
        }
    }
    fill.block_tables = tables.clone();
    fill.logit_rows = vec![0];
    let nf = fill.tokens.len();
    let (kx, vx) = (normals(r, nf * kv_dim, 1.5), normals(r, nf * kv_dim, 1.0));
    let mut kvg = g.alloc_kv(n_blocks * 16, kv_dim).unwrap();
    let sg = g.begin_step(&fill);
    g.kv_write(
        &gpu_in(g, nf, kv_dim, &kx),
        &gpu_in(g, nf, kv_dim, &vx),
        &mut kvg,
        &sg,
    );
    let kvc = cpu.map(|cpu| {
        let mut kvc = cpu.alloc_kv(n_blocks * 16, kv_dim).unwrap();
        let sc = cpu.begin_step(&fill);
        cpu.kv_write(
            &cpu_in(cpu, nf, kv_dim, &kx),
            &cpu_in(cpu, nf, kv_dim, &vx),
            &mut kvc,
            &sc,
        );
        kvc
    });
    Caches {
        kvg,
        kvc,
        tables,
        base,
        kx,
        vx,
    }
}

/// A decode step: for each (sequence, position), one token at that position.
fn step(c: &Caches, toks: &[(usize, usize)]) -> StepInfo {
    let mut s = StepInfo::default();
    for &(seq, p) in toks {
        s.tokens.push(0);
        s.positions.push(p as u32);
        s.slots.push(c.tables[seq][p / 16] * 16 + (p % 16) as u32);
        s.seq_index.push(seq as u32);
    }
    s.block_tables = c.tables.clone();
    s.logit_rows = vec![0];
    s
}

/// Exact attention (f64, from the f16 values) of query `qh` (one head, f32) of a token of
/// sequence `seq` at position `pos`, KV head `kvh`.
fn exact_head(c: &Caches, g: AttnGeom, seq: usize, pos: usize, kvh: usize, qh: &[f32]) -> Vec<f64> {
    let (hd, kv_dim) = (g.head_dim, g.n_kv_head * g.head_dim);
    let f16r = |v: f32| half::f16::from_f32(v).to_f64();
    let q: Vec<f64> = qh.iter().map(|&v| f16r(v)).collect();
    let lo = g.window.map_or(0, |w| (pos + 1).saturating_sub(w));
    let at = |p: usize| (c.base[seq] + p) * kv_dim + kvh * hd;
    let sc: Vec<f64> = (lo..=pos)
        .map(|p| (0..hd).map(|d| q[d] * f16r(c.kx[at(p) + d])).sum::<f64>() * g.scale as f64)
        .collect();
    let m = sc.iter().cloned().fold(f64::MIN, f64::max);
    let w: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
    let z: f64 = w.iter().sum();
    let mut o = vec![0f64; hd];
    for (p, wi) in (lo..=pos).zip(&w) {
        for (d, od) in o.iter_mut().enumerate() {
            *od += wi * f16r(c.vx[at(p) + d]);
        }
    }
    o.iter().map(|v| v / z).collect()
}

/// (n_head, n_kv_head, head_dim, window, each sequence's context).
type Case = (usize, usize, usize, Option<usize>, Vec<usize>);

/// Every geometry the models use (head_dim 64..512, GQA 1..16, windows shorter and longer than
/// the exact kernel's limit) at contexts 1..20000, several per step: each token's output against
/// exact f64 attention and the CPU's. Tolerances: flash-decoding (f16 K/V and Q, f32 scores,
/// softmax and accumulation) within 2e-4 relative L2 of exact per (token, head) row and 1e-3
/// elementwise (|Δ| / max(1, |exact|)); the exact-chain tokens (up to `EXACT_KEYS` keys) within
/// 2e-3 of the CPU, whose arithmetic they are up to rounding flips of the f16 accumulator.
#[test]
#[ignore = "needs CUDA"]
fn decode_attention_matches_exact_and_cpu() {
    let (g, cpu) = (gpu(), CpuBackend::new());
    let cases: [Case; 7] = [
        (32, 8, 128, None, vec![20000, 4097, 129, 128, 1, 700, 16384]),
        (8, 8, 64, None, vec![16389, 130, 65, 2]),
        (16, 2, 256, Some(1000), vec![5000, 999, 1001, 1500]),
        (8, 1, 512, None, vec![3001, 200, 127]),
        (4, 1, 512, Some(1024), vec![2047, 1000]),
        (4, 4, 128, Some(100), vec![2000, 50]),
        (16, 1, 128, None, vec![1000, 8193]),
    ];
    let mut failures = Vec::new();
    for (k, (n_head, n_kv, hd, window, lens)) in cases.into_iter().enumerate() {
        let mut r = rng(1200 + k as u64);
        let kv_dim = n_kv * hd;
        let c = caches(&g, Some(&cpu), &mut r, kv_dim, &lens);
        let geom = AttnGeom {
            n_head,
            n_kv_head: n_kv,
            head_dim: hd,
            window,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let toks: Vec<(usize, usize)> = lens.iter().enumerate().map(|(s, &l)| (s, l - 1)).collect();
        let st = step(&c, &toks);
        let n = toks.len();
        let q = normals(&mut r, n * n_head * hd, 1.5);
        let (sg, sc) = (g.begin_step(&st), cpu.begin_step(&st));
        let mut og = gpu_out(&g, n, n_head * hd);
        let mut oc = cpu.alloc(n, n_head * hd);
        oc.data.fill(f32::NAN);
        g.attention(&gpu_in(&g, n, n_head * hd, &q), &c.kvg, geom, &sg, &mut og);
        cpu.attention(
            &cpu_in(&cpu, n, n_head * hd, &q),
            c.kvc.as_ref().unwrap(),
            geom,
            &sc,
            &mut oc,
        );
        let got = g.read(&og);
        for (t, &(seq, pos)) in toks.iter().enumerate() {
            let n_keys = window.map_or(pos + 1, |w| w.min(pos + 1));
            let (mut l2, mut el, mut l2_cpu) = (0f64, 0f64, 0f64);
            for h in 0..n_head {
                let i = (t * n_head + h) * hd;
                let ex = exact_head(&c, geom, seq, pos, h / (n_head / n_kv), &q[i..i + hd]);
                let ex32: Vec<f32> = ex.iter().map(|&v| v as f32).collect();
                l2 = l2.max(rel_err(&got[i..i + hd], &ex32));
                el = el.max(max_rel(&got[i..i + hd], &ex32));
                l2_cpu = l2_cpu.max(rel_err(&oc.data[i..i + hd], &ex32));
            }
            let vs_cpu = max_rel(
                &got[t * n_head * hd..(t + 1) * n_head * hd],
                &oc.data[t * n_head * hd..(t + 1) * n_head * hd],
            );
            let flash = n_keys > EXACT_KEYS;
            println!(
                "heads {n_head}/{n_kv} hd {hd} window {window:?} keys {n_keys:>5} ({}, {} splits): vs exact L2 {l2:.2e} elem {el:.2e}; CPU vs exact L2 {l2_cpu:.2e}; vs CPU {vs_cpu:.2e}",
                if flash { "flash" } else { "exact chain" },
                token_splits(n_keys)
            );
            let ok = if flash {
                l2 <= 2e-4 && el <= 1e-3
            } else {
                vs_cpu <= 2e-3
            };
            if !ok {
                failures.push(format!("heads {n_head}/{n_kv} hd {hd} window {window:?} keys {n_keys}: L2 {l2:.2e} elem {el:.2e} vs CPU {vs_cpu:.2e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Batch invariance: a token's output bits do not depend on the step — alone, among tokens of
/// longer and shorter contexts (a larger flash grid, exact-chain tokens beside it), behind a
/// prefill run (the decode kernels then walk a row list), and replayed from a CUDA graph.
#[test]
#[ignore = "needs CUDA"]
fn decode_attention_is_batch_invariant() {
    let g = gpu();
    let (n_head, n_kv, hd) = (32usize, 8usize, 128usize);
    let kv_dim = n_kv * hd;
    let mut r = rng(1300);
    let lens = [5000usize, 20000, 300, 60, 129, 1];
    let c = caches(&g, None, &mut r, kv_dim, &lens);
    for window in [None, Some(2048)] {
        let geom = AttnGeom {
            n_head,
            n_kv_head: n_kv,
            head_dim: hd,
            window,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let qa = normals(&mut r, n_head * hd, 1.5);
        let other = normals(&mut r, 32 * n_head * hd, 1.5);
        // Run `toks` with token A's query in row `at` (others random); return A's output bits.
        let run = |toks: &[(usize, usize)], at: usize, graph: bool| -> Vec<u32> {
            let n = toks.len();
            let mut q = other[..n * n_head * hd].to_vec();
            q[at * n_head * hd..(at + 1) * n_head * hd].copy_from_slice(&qa);
            let st = step(&c, toks);
            let sg = g.begin_step(&st);
            let qg = gpu_in(&g, n, n_head * hd, &q);
            let og = RefCell::new(gpu_out(&g, n, n_head * hd));
            if graph {
                let gr = g
                    .record(|| g.attention(&qg, &c.kvg, geom, &sg, &mut og.borrow_mut()))
                    .expect("recording");
                g.fill(&mut og.borrow_mut(), f32::NAN);
                gr.launch().expect("replay");
                g.synchronize();
            } else {
                g.attention(&qg, &c.kvg, geom, &sg, &mut og.borrow_mut());
            }
            let o = g.read(&og.borrow());
            o[at * n_head * hd..(at + 1) * n_head * hd]
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        for (s, pos) in [(0usize, 4999usize), (4, 128), (2, 299)] {
            let a = (s, pos);
            let alone = run(&[a], 0, false);
            let variants: Vec<(&str, Vec<u32>)> = vec![
                (
                    "with longer and shorter",
                    run(&[(1, 19999), a, (3, 59), (5, 0)], 1, false),
                ),
                ("with shorter only", run(&[(3, 59), (4, 128), a], 2, false)),
                ("graph replay", run(&[(1, 19999), (2, 299), a], 2, true)),
                (
                    "behind a prefill run",
                    run(
                        &(44..60).map(|p| (3, p)).chain([a]).collect::<Vec<_>>(),
                        16,
                        false,
                    ),
                ),
            ];
            for (what, bits) in variants {
                let same = bits.iter().zip(&alone).filter(|(x, y)| x == y).count();
                println!(
                    "window {window:?} token at {pos}: {what}: {same}/{} bits equal",
                    alone.len()
                );
                assert_eq!(bits, alone, "window {window:?} token at {pos}: {what}");
            }
        }
    }
}

/// Not a check: the decode attention kernels alone at qwen3-8b shapes (32 query heads, 8 KV
/// heads, hd 128), batch 1 and 16, as CUDA-graph replays over enough copies of the cache that
/// the reads come from HBM rather than the 60 MB L2. GB/s counts each token's K and V once (the
/// GQA group shares them).
#[test]
#[ignore = "needs CUDA"]
fn report_attention_decode() {
    let g = gpu();
    let (n_head, n_kv, hd) = (32usize, 8usize, 128usize);
    let kv_dim = n_kv * hd;
    let mut r = rng(1400);
    println!("| keys | tokens | splits | µs | GB/s |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for depth in [512usize, 4096, 16384] {
        for batch in [1usize, 16] {
            let bytes = batch * depth * kv_dim * 2 * 2;
            let copies = (256usize << 20).div_ceil(bytes).clamp(1, 64);
            // `batch` sequences of `depth` keys, contiguous blocks, in `copies` pools; the
            // contents stay as allocated (the kernels' time does not depend on the values).
            let per_seq = depth.div_ceil(16);
            let pools: Vec<CudaKv> = (0..copies)
                .map(|_| g.alloc_kv(batch * per_seq * 16, kv_dim).unwrap())
                .collect();
            let mut st = StepInfo::default();
            for s in 0..batch {
                let table: Vec<u32> = (0..per_seq as u32)
                    .map(|b| (s * per_seq) as u32 + b)
                    .collect();
                st.tokens.push(0);
                st.positions.push(depth as u32 - 1);
                st.slots
                    .push(table[(depth - 1) / 16] * 16 + ((depth - 1) % 16) as u32);
                st.seq_index.push(s as u32);
                st.block_tables.push(table);
            }
            st.logit_rows = vec![0];
            let sg = g.begin_step(&st);
            let geom = AttnGeom {
                n_head,
                n_kv_head: n_kv,
                head_dim: hd,
                window: None,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            let qg = gpu_in(
                &g,
                batch,
                n_head * hd,
                &normals(&mut r, batch * n_head * hd, 1.0),
            );
            let og = RefCell::new(gpu_out(&g, batch, n_head * hd));
            let calls = copies.max(8);
            let gr = g
                .record(|| {
                    for i in 0..calls {
                        g.attention(&qg, &pools[i % copies], geom, &sg, &mut og.borrow_mut());
                    }
                })
                .expect("recording");
            gr.launch().expect("replay");
            g.synchronize();
            let mut ts: Vec<f64> = (0..5)
                .map(|_| {
                    let t = std::time::Instant::now();
                    gr.launch().expect("replay");
                    g.synchronize();
                    t.elapsed().as_secs_f64() / calls as f64
                })
                .collect();
            ts.sort_by(f64::total_cmp);
            let s = ts[2];
            println!(
                "| {depth} | {batch} | {} | {:.1} | {:.0} |",
                splits(depth),
                s * 1e6,
                bytes as f64 / s / 1e9
            );
        }
    }
}
