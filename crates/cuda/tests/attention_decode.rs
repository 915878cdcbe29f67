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
use kestrel_cuda::ops::attention::{
    fd_grid, fdt_cap, token_splits, FdTune, EXACT_KEYS, MAX_SPLITS,
};
use kestrel_cuda::{CudaBackend, CudaKv, CudaTensor};
use kestrel_engine::{AttnGeom, Backend, StepInfo};
use rand::rngs::StdRng;

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
    let (tables, n_slots) = scattered_tables(lens, r);
    // Each sequence's first row in the fill step's K/V.
    let base: Vec<usize> = lens
        .iter()
        .scan(0, |row, &l| {
            *row += l;
            Some(*row - l)
        })
        .collect();
    let fill = fill_step(lens, &tables);
    let nf = fill.tokens.len();
    let (kx, vx) = (normals(r, nf * kv_dim, 1.5), normals(r, nf * kv_dim, 1.0));
    let mut kvg = g.alloc_kv(n_slots, kv_dim).unwrap();
    let sg = g.begin_step(&fill);
    g.kv_write(
        &gpu_in(g, nf, kv_dim, &kx),
        &gpu_in(g, nf, kv_dim, &vx),
        &mut kvg,
        &sg,
    );
    let kvc = cpu.map(|cpu| {
        let mut kvc = cpu.alloc_kv(n_slots, kv_dim).unwrap();
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

/// The flash-decoding configurations the checks run under: the default (tensor cores where the
/// head dim has a kernel, a split per SM and KV head), many splits, few splits (long per-warp
/// pipelines), and the f32 kernel throughout.
fn tunes() -> [(&'static str, FdTune); 4] {
    let t = |tensor_cores, cap| FdTune { tensor_cores, cap };
    [
        ("fdt", t(true, None)),
        ("fdt cap 128", t(true, Some(128))),
        ("fdt cap 3", t(true, Some(3))),
        ("fd", t(false, None)),
    ]
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
        let mut oc = cpu.alloc(n, n_head * hd);
        oc.data.fill(f32::NAN);
        cpu.attention(
            &cpu_in(&cpu, n, n_head * hd, &q),
            c.kvc.as_ref().unwrap(),
            geom,
            &sc,
            &mut oc,
        );
        let mut exact = vec![0f32; n * n_head * hd];
        for (t, &(seq, pos)) in toks.iter().enumerate() {
            for h in 0..n_head {
                let i = (t * n_head + h) * hd;
                let ex = exact_head(&c, geom, seq, pos, h / (n_head / n_kv), &q[i..i + hd]);
                for (o, v) in exact[i..i + hd].iter_mut().zip(ex) {
                    *o = v as f32;
                }
            }
        }
        for (name, tune) in tunes() {
            g.set_fd_tune(tune);
            let mut og = gpu_out(&g, n, n_head * hd);
            g.attention(&gpu_in(&g, n, n_head * hd, &q), &c.kvg, geom, &sg, &mut og);
            let got = g.read(&og);
            for (t, &(_, pos)) in toks.iter().enumerate() {
                let n_keys = window.map_or(pos + 1, |w| w.min(pos + 1));
                let flash = n_keys > EXACT_KEYS;
                // The exact-chain tokens do not depend on the flash kernel: checked once.
                if !flash && name != "fdt" {
                    continue;
                }
                let (mut l2, mut el, mut l2_cpu) = (0f64, 0f64, 0f64);
                for h in 0..n_head {
                    let i = (t * n_head + h) * hd;
                    l2 = l2.max(rel_err(&got[i..i + hd], &exact[i..i + hd]));
                    el = el.max(max_rel(&got[i..i + hd], &exact[i..i + hd]));
                    l2_cpu = l2_cpu.max(rel_err(&oc.data[i..i + hd], &exact[i..i + hd]));
                }
                let r = t * n_head * hd..(t + 1) * n_head * hd;
                let vs_cpu = max_rel(&got[r.clone()], &oc.data[r]);
                let cap = tune.cap.unwrap_or(if tune.tensor_cores && hd <= 256 {
                    fdt_cap(g.sm_count(), n_kv)
                } else {
                    MAX_SPLITS
                });
                println!(
                    "{name:>9} heads {n_head}/{n_kv} hd {hd} window {window:?} keys {n_keys:>5} ({}, {} splits): vs exact L2 {l2:.2e} elem {el:.2e}; CPU vs exact L2 {l2_cpu:.2e}; vs CPU {vs_cpu:.2e}",
                    if flash { "flash" } else { "exact chain" },
                    token_splits(n_keys, cap)
                );
                let ok = if flash {
                    l2 <= 2e-4 && el <= 1e-3
                } else {
                    vs_cpu <= 2e-3
                };
                if !ok {
                    failures.push(format!("{name} heads {n_head}/{n_kv} hd {hd} window {window:?} keys {n_keys}: L2 {l2:.2e} elem {el:.2e} vs CPU {vs_cpu:.2e}"));
                }
            }
        }
        g.set_fd_tune(tunes()[0].1);
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
    for ((name, tune), window) in [tunes()[0], tunes()[3]]
        .into_iter()
        .flat_map(|t| [(t, None), (t, Some(2048))])
    {
        g.set_fd_tune(tune);
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
                    "{name} window {window:?} token at {pos}: {what}: {same}/{} bits equal",
                    alone.len()
                );
                assert_eq!(
                    bits, alone,
                    "{name} window {window:?} token at {pos}: {what}"
                );
            }
        }
    }
}

/// Fill every slot of `kv` with random non-zero K/V (one random 4096-token chunk, written over
/// and over), as a model's cache holds.
fn fill_random(g: &CudaBackend, kv: &mut CudaKv, n_slots: usize, chunk: &(CudaTensor, CudaTensor)) {
    let per = chunk.0.rows;
    for s0 in (0..n_slots).step_by(per) {
        let n = per.min(n_slots - s0);
        let st = StepInfo {
            tokens: vec![0; n],
            positions: (0..n as u32).collect(),
            slots: (s0 as u32..(s0 + n) as u32).collect(),
            seq_index: vec![0; n],
            block_tables: vec![vec![0]],
            logit_rows: vec![0],
            ..Default::default()
        };
        let sg = g.begin_step(&st);
        g.kv_write(&chunk.0, &chunk.1, kv, &sg);
    }
    g.synchronize();
}

/// Not a check: the decode attention kernels alone at qwen3-8b shapes (32 query heads, 8 KV
/// heads, hd 128), batch 1 and 16, under each flash-decoding configuration, as CUDA-graph
/// replays. Conditions as in `kestrel bench` tg128 at depth d: d + 64 keys (a context halfway
/// through the 128 tokens, past a round boundary as 16385.. are), random non-zero K/V, and
/// calls rotating over at least 512 MiB of distinct pools so the reads come from HBM, not the
/// 60 MB L2 (the model cycles 36 layers' caches). GB/s counts each token's K and V once (the
/// GQA group shares them); "floor" is those bytes at 4.63 TB/s.
#[test]
#[ignore = "needs CUDA"]
fn report_attention_decode() {
    let g = gpu();
    let (n_head, n_kv, hd) = (32usize, 8usize, 128usize);
    let kv_dim = n_kv * hd;
    let mut r = rng(1400);
    let chunk = (
        gpu_in(&g, 4096, kv_dim, &normals(&mut r, 4096 * kv_dim, 1.5)),
        gpu_in(&g, 4096, kv_dim, &normals(&mut r, 4096 * kv_dim, 1.0)),
    );
    let t = |tensor_cores, cap| FdTune { tensor_cores, cap };
    let configs = [
        ("fd", t(false, None)),
        ("fdt", t(true, None)),
        ("fdt", t(true, Some(8))),
        ("fdt", t(true, Some(32))),
        ("fdt", t(true, Some(64))),
        ("fdt", t(true, Some(128))),
    ];
    println!("| keys | tokens | kernel | cap | splits | µs | GB/s | of floor |");
    println!("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for depth in [512usize, 4096, 16384] {
        let keys = depth + 64;
        for batch in [1usize, 16] {
            let bytes = batch * keys * kv_dim * 2 * 2;
            let copies = (512usize << 20).div_ceil(bytes).clamp(1, 256);
            // `batch` sequences of `keys` keys, contiguous blocks, in `copies` pools.
            let per_seq = keys.div_ceil(16);
            let pools: Vec<CudaKv> = (0..copies)
                .map(|_| {
                    let mut kv = g.alloc_kv(batch * per_seq * 16, kv_dim).unwrap();
                    fill_random(&g, &mut kv, batch * per_seq * 16, &chunk);
                    kv
                })
                .collect();
            let mut st = StepInfo::default();
            for s in 0..batch {
                let table: Vec<u32> = (0..per_seq as u32)
                    .map(|b| (s * per_seq) as u32 + b)
                    .collect();
                st.tokens.push(0);
                st.positions.push(keys as u32 - 1);
                st.slots
                    .push(table[(keys - 1) / 16] * 16 + ((keys - 1) % 16) as u32);
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
            for (name, tune) in configs {
                g.set_fd_tune(tune);
                let cap = tune.cap.unwrap_or(if tune.tensor_cores {
                    fdt_cap(g.sm_count(), n_kv)
                } else {
                    MAX_SPLITS
                });
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
                    "| {keys} | {batch} | {name} | {cap} | {} (grid {}) | {:.1} | {:.0} | {:.0}% |",
                    token_splits(keys, cap),
                    fd_grid(keys, cap),
                    s * 1e6,
                    bytes as f64 / s / 1e9,
                    bytes as f64 / 4.63e12 / s * 100.0
                );
            }
        }
    }
}
