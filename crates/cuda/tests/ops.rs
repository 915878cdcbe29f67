//! Every CUDA op against the CPU backend's op (the reference) on random non-zero inputs, with
//! GPU outputs poisoned with NaN before each run (so an unwritten element fails). Tolerances are
//! stated per test; each test prints the error it measured.
//!
//! Run on a GPU machine: `cargo test --release -p kestrel-cuda -- --include-ignored`.

mod common;

use common::*;
use kestrel_cpu::backend::CpuTensor;
use kestrel_cpu::CpuBackend;
use kestrel_cuda::{CudaBackend, CudaTensor};
use kestrel_engine::{AttnGeom, Backend, StepInfo};
use kestrel_gguf::GgmlType;
use kestrel_model::{FfnKind, RopeSpec};
use rand::Rng;

const MATMUL_TYPES: [GgmlType; 13] = [
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

fn cpu_in(cpu: &CpuBackend, rows: usize, cols: usize, data: &[f32]) -> CpuTensor {
    let mut t = cpu.alloc(rows, cols);
    t.data.copy_from_slice(data);
    t
}

fn cpu_out(cpu: &CpuBackend, rows: usize, cols: usize) -> CpuTensor {
    let mut t = cpu.alloc(rows, cols);
    t.data.fill(f32::NAN);
    t
}

fn gpu_in(g: &CudaBackend, rows: usize, cols: usize, data: &[f32]) -> CudaTensor {
    let mut t = g.alloc(rows, cols);
    g.write(&mut t, data);
    t
}

fn gpu_out(g: &CudaBackend, rows: usize, cols: usize) -> CudaTensor {
    let mut t = g.alloc(rows, cols);
    g.fill(&mut t, f32::NAN);
    t
}

/// One sequence of `n` tokens at positions 0..n in blocks 0, 1, ...
fn simple_step(tokens: Vec<u32>) -> StepInfo {
    let n = tokens.len();
    StepInfo {
        positions: (0..n as u32).collect(),
        slots: (0..n as u32).collect(),
        seq_index: vec![0; n],
        block_tables: vec![(0..n.div_ceil(16) as u32).collect()],
        logit_rows: vec![n as u32 - 1],
        tokens,
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Blocks of 32 with scales e^U(-8, 8), an all-zero block, one of exact ties, one with a
/// repeated largest magnitude of both signs.
fn activation_samples(n_blocks32: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    let mut x = Vec::new();
    for b in 0..n_blocks32 {
        let scale = (r.gen::<f32>() * 16.0 - 8.0).exp();
        for i in 0..32 {
            x.push(match b {
                7 | 40..=47 => 0.0,
                9 => (i as f32 - 15.5) * 0.5,
                13 if i % 5 == 0 => {
                    if i % 2 == 0 {
                        3.0
                    } else {
                        -3.0
                    }
                }
                13 => 1.0,
                _ => normal(&mut r) * scale,
            });
        }
    }
    x
}

#[test]
#[ignore = "needs CUDA"]
fn quantize_q8_1_and_q8_k_are_bit_identical_to_the_reference() {
    let g = gpu();
    let x = activation_samples(256, 1);
    let _step = g.begin_step(&simple_step(vec![0]));
    for (k, name) in [(false, "Q8_1"), (true, "Q8_K")] {
        let got = kestrel_cuda::ops::matmul::quantize_to_host(&g, &x, k);
        let mut want = vec![0u8; got.len()];
        if k {
            kestrel_gguf::quant::quantize_q8_k(&x, &mut want);
        } else {
            kestrel_gguf::quant::quantize_q8_1(&x, &mut want);
        }
        let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        println!("quantize {name}: {diff} differing bytes of {}", want.len());
        assert_eq!(
            diff, 0,
            "GPU {name} blocks differ from the kestrel_gguf reference quantizer"
        );
    }
}

#[test]
#[ignore = "needs CUDA"]
fn embed_every_type_is_bit_identical() {
    let (g, cpu) = (gpu(), CpuBackend::new());
    let (rows, cols) = (40, 512);
    for (k, ty) in MATMUL_TYPES.into_iter().enumerate() {
        let mut r = rng(100 + k as u64);
        let f = gguf(
            &[],
            vec![(
                "emb".into(),
                vec![cols as u64, rows as u64],
                ty,
                random_weight(ty, rows, cols, 0.5, &mut r),
            )],
        );
        let (wg, wc) = (
            g.upload(wref(&f, "emb")).unwrap(),
            cpu.upload(wref(&f, "emb")).unwrap(),
        );
        let step = simple_step(vec![3, 39, 0, 17, 3, 21]);
        let n = step.tokens.len();
        let (sg, sc) = (g.begin_step(&step), cpu.begin_step(&step));
        let mut og = gpu_out(&g, n, cols);
        let mut oc = cpu_out(&cpu, n, cols);
        g.embed(&wg, &sg, 1.7, &mut og);
        cpu.embed(&wc, &sc, 1.7, &mut oc);
        let got = g.read(&og);
        let e = max_rel(&got, &oc.data);
        println!("embed {ty}: max rel err {e:.2e}");
        assert_eq!(e, 0.0, "embed {ty}: not bit-identical to the CPU");
    }
}

#[test]
#[ignore = "needs CUDA"]
fn rms_norm_per_row_and_per_head() {
    let (g, cpu) = (gpu(), CpuBackend::new());
    let mut r = rng(2);
    let (rows, cols) = (5, 896);
    let w_row = normals(&mut r, cols, 1.0);
    let w_head = normals(&mut r, 64, 1.0);
    let f = gguf(
        &[],
        vec![
            (
                "w_row".into(),
                vec![cols as u64],
                GgmlType::F32,
                f32_bytes(&w_row),
            ),
            ("w_head".into(), vec![64], GgmlType::F32, f32_bytes(&w_head)),
        ],
    );
    let (wg_row, wc_row) = (
        g.upload(wref(&f, "w_row")).unwrap(),
        cpu.upload(wref(&f, "w_row")).unwrap(),
    );
    let (wg_head, wc_head) = (
        g.upload(wref(&f, "w_head")).unwrap(),
        cpu.upload(wref(&f, "w_head")).unwrap(),
    );
    let _ = g.begin_step(&simple_step(vec![0]));
    let x = normals(&mut r, rows * cols, 3.0);
    let (xg, xc) = (gpu_in(&g, rows, cols, &x), cpu_in(&cpu, rows, cols, &x));
    for (label, width, wg, wc) in [
        ("row", cols, Some(&wg_row), Some(&wc_row)),
        ("head 64", 64, Some(&wg_head), Some(&wc_head)),
        ("head 128, no weight", 128, None, None),
    ] {
        let mut og = gpu_out(&g, rows, cols);
        let mut oc = cpu_out(&cpu, rows, cols);
        g.rms_norm(&xg, wg, width, 1e-6, &mut og);
        cpu.rms_norm(&xc, wc, width, 1e-6, &mut oc);
        let e = max_rel(&g.read(&og), &oc.data);
        println!("rms_norm {label}: max rel err {e:.2e}");
        assert!(e <= 1e-6, "rms_norm {label}: {e}");
    }
}

/// Exact product of the dequantized weight with x, in f64.
fn reference_matmul(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tok: usize,
) -> Vec<f32> {
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let mut deq = vec![0f32; cols];
    let mut out = vec![0f32; n_tok * rows];
    for row in 0..rows {
        kestrel_gguf::quant::dequantize(ty, &w[row * rb..(row + 1) * rb], &mut deq).unwrap();
        for t in 0..n_tok {
            let xr = &x[t * cols..(t + 1) * cols];
            out[t * rows + row] = deq
                .iter()
                .zip(xr)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>() as f32;
        }
    }
    out
}

/// Tolerance (‖gpu − cpu‖ / ‖cpu‖): the GPU quantizes activations exactly as the CPU does
/// (Q8_0/Q8_1 codes for the legacy types, Q8_K for the K-quants) and forms the same integer
/// sums, so only the f32 summation order differs.
fn matmul_tol_vs_cpu(_ty: GgmlType) -> f64 {
    1e-5
}

#[test]
#[ignore = "needs CUDA"]
fn matmul_every_type_against_cpu_and_exact() {
    let (g, cpu) = (gpu(), CpuBackend::new());
    let (rows, cols) = (300, 512);
    let mut worst = Vec::new();
    for (k, ty) in MATMUL_TYPES.into_iter().enumerate() {
        let mut r = rng(200 + k as u64);
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
        for n_tok in [1usize, 3, 11] {
            let _ = g.begin_step(&simple_step(vec![0]));
            let x = normals(&mut r, n_tok * cols, 1.0);
            let (xg, xc) = (gpu_in(&g, n_tok, cols, &x), cpu_in(&cpu, n_tok, cols, &x));
            let mut og = gpu_out(&g, n_tok, rows);
            let mut oc = cpu_out(&cpu, n_tok, rows);
            g.matmul(&wg, &xg, &mut og);
            cpu.matmul(&wc, &xc, &mut oc);
            let got = g.read(&og);
            let exact = reference_matmul(ty, &wbytes, rows, cols, &x, n_tok);
            let (e_cpu, e_exact, e_cpu_exact) = (
                rel_err(&got, &oc.data),
                rel_err(&got, &exact),
                rel_err(&oc.data, &exact),
            );
            println!("matmul {ty:>5} n_tok {n_tok:>2}: vs CPU {e_cpu:.2e}  vs exact {e_exact:.2e}  (CPU vs exact {e_cpu_exact:.2e})");
            let tol_exact = if ty.is_quantized() { 2e-2 } else { 1e-5 };
            if e_cpu > matmul_tol_vs_cpu(ty) || e_exact > tol_exact {
                worst.push(format!(
                    "{ty} n_tok {n_tok}: vs CPU {e_cpu:.2e}, vs exact {e_exact:.2e}"
                ));
            }
        }
    }
    assert!(
        worst.is_empty(),
        "matmul out of tolerance:\n{}",
        worst.join("\n")
    );
}

#[test]
#[ignore = "needs CUDA"]
fn elementwise_ops_match() {
    let (g, cpu) = (gpu(), CpuBackend::new());
    let mut r = rng(3);
    let (rows, cols) = (7, 320);
    let bias = normals(&mut r, cols, 1.0);
    let f = gguf(
        &[],
        vec![
            (
                "bias".into(),
                vec![cols as u64],
                GgmlType::F32,
                f32_bytes(&bias),
            ),
            ("s".into(), vec![1], GgmlType::F32, f32_bytes(&[0.37])),
        ],
    );
    let (bg, bc) = (
        g.upload(wref(&f, "bias")).unwrap(),
        cpu.upload(wref(&f, "bias")).unwrap(),
    );
    let (sg, sc) = (
        g.upload(wref(&f, "s")).unwrap(),
        cpu.upload(wref(&f, "s")).unwrap(),
    );
    let mut step = simple_step((0..rows as u32).collect());
    step.logit_rows = vec![6, 2, 0, 2];
    let (stg, stc) = (g.begin_step(&step), cpu.begin_step(&step));
    let x = normals(&mut r, rows * cols, 20.0);
    let y = normals(&mut r, rows * cols, 5.0);
    let check = |label: &str, got: Vec<f32>, want: &[f32], tol: f64| {
        let e = max_rel(&got, want);
        println!("{label}: max rel err {e:.2e}");
        assert!(e <= tol, "{label}: {e} > {tol}");
    };
    // add
    let (mut xg, yg) = (gpu_in(&g, rows, cols, &x), gpu_in(&g, rows, cols, &y));
    let (mut xc, yc) = (cpu_in(&cpu, rows, cols, &x), cpu_in(&cpu, rows, cols, &y));
    g.add(&mut xg, &yg);
    cpu.add(&mut xc, &yc);
    check("add", g.read(&xg), &xc.data, 0.0);
    // add_bias
    g.add_bias(&mut xg, &bg);
    cpu.add_bias(&mut xc, &bc);
    check("add_bias", g.read(&xg), &xc.data, 0.0);
    // scale_by
    g.scale_by(&mut xg, &sg);
    cpu.scale_by(&mut xc, &sc);
    check("scale_by", g.read(&xg), &xc.data, 0.0);
    // scale
    g.scale(&mut xg, std::f32::consts::FRAC_1_SQRT_2);
    cpu.scale(&mut xc, std::f32::consts::FRAC_1_SQRT_2);
    check("scale", g.read(&xg), &xc.data, 0.0);
    // copy_cols (one 48-wide slice of each row, as a layer's PLE input)
    let mut slg = gpu_out(&g, rows, 48);
    let mut slc = cpu_out(&cpu, rows, 48);
    g.copy_cols(&xg, 96, &mut slg);
    cpu.copy_cols(&xc, 96, &mut slc);
    check("copy_cols", g.read(&slg), &slc.data, 0.0);
    // softcap
    g.softcap(&mut xg, 30.0);
    cpu.softcap(&mut xc, 30.0);
    check("softcap", g.read(&xg), &xc.data, 1e-6);
    // copy
    let mut cg = gpu_out(&g, rows, cols);
    let mut cc = cpu_out(&cpu, rows, cols);
    g.copy(&xg, &mut cg);
    cpu.copy(&xc, &mut cc);
    check("copy", g.read(&cg), &g.read(&xg), 0.0);
    // gather_logit_rows
    let mut og = gpu_out(&g, 4, cols);
    let mut oc = cpu_out(&cpu, 4, cols);
    g.gather_logit_rows(&xg, &stg, &mut og);
    cpu.gather_logit_rows(&xc, &stc, &mut oc);
    check("gather_logit_rows", g.read(&og), &oc.data, 1e-6);
    let src = g.read(&xg);
    let want: Vec<f32> = step
        .logit_rows
        .iter()
        .flat_map(|&r| src[r as usize * cols..][..cols].to_vec())
        .collect();
    check("gather_logit_rows (exact rows)", g.read(&og), &want, 0.0);
}

#[test]
#[ignore = "needs CUDA"]
fn gated_activations_match() {
    let (g, cpu) = (gpu(), CpuBackend::new());
    let mut r = rng(4);
    let (rows, cols) = (3, 4864);
    let mut gate = normals(&mut r, rows * cols, 4.0);
    gate[0] = -12.0;
    gate[1] = 11.0;
    gate[2] = -10.0;
    gate[3] = 1e-3;
    let up = normals(&mut r, rows * cols, 1.0);
    let _ = g.begin_step(&simple_step(vec![0]));
    // SiLU is exact f32 up to exp's rounding; GELU goes through f16 as on the CPU, so 1 f16 ulp.
    for (kind, tol) in [(FfnKind::SiluGated, 1e-6), (FfnKind::GeluTanhGated, 2e-3)] {
        let (mut gg, ug) = (gpu_in(&g, rows, cols, &gate), gpu_in(&g, rows, cols, &up));
        let (mut gc, uc) = (
            cpu_in(&cpu, rows, cols, &gate),
            cpu_in(&cpu, rows, cols, &up),
        );
        g.gated_act(&mut gg, &ug, kind);
        cpu.gated_act(&mut gc, &uc, kind);
        let got = g.read(&gg);
        let e = max_rel(&got, &gc.data);
        let exact = got
            .iter()
            .zip(&gc.data)
            .filter(|(a, b)| a.to_bits() == b.to_bits())
            .count();
        println!(
            "gated_act {kind:?}: max rel err {e:.2e}, {exact}/{} bit-identical",
            got.len()
        );
        assert!(e <= tol, "gated_act {kind:?}: {e} > {tol}");
    }
}

#[test]
#[ignore = "needs CUDA"]
fn rope_neox_adjacent_partial_and_factors() {
    let (g, cpu) = (gpu(), CpuBackend::new());
    let mut r = rng(5);
    let hd = 128;
    let factors: Vec<f32> = (0..hd / 4).map(|i| 1.0 + i as f32 * 0.37).collect();
    let f = gguf(
        &[],
        vec![(
            "rope_freqs.weight".into(),
            vec![(hd / 4) as u64],
            GgmlType::F32,
            f32_bytes(&factors),
        )],
    );
    let (fg, fc) = (
        g.upload(wref(&f, "rope_freqs.weight")).unwrap(),
        cpu.upload(wref(&f, "rope_freqs.weight")).unwrap(),
    );
    let positions = vec![0u32, 1, 17, 255, 4095, 40000];
    let n = positions.len();
    let mut step = simple_step(vec![0; n]);
    step.positions = positions;
    let cases = [
        (
            "neox full",
            RopeSpec {
                base: 1_000_000.0,
                freq_scale: 1.0,
                n_rot: hd,
                neox: true,
                freq_factors: None,
            },
        ),
        (
            "adjacent full",
            RopeSpec {
                base: 10_000.0,
                freq_scale: 1.0,
                n_rot: hd,
                neox: false,
                freq_factors: None,
            },
        ),
        (
            "adjacent partial, factors, linear scale",
            RopeSpec {
                base: 500_000.0,
                freq_scale: 0.25,
                n_rot: hd / 2,
                neox: false,
                freq_factors: Some("rope_freqs.weight".into()),
            },
        ),
        (
            "neox partial, factors",
            RopeSpec {
                base: 10_000.0,
                freq_scale: 1.0,
                n_rot: hd / 2,
                neox: true,
                freq_factors: Some("rope_freqs.weight".into()),
            },
        ),
    ];
    for (label, spec) in cases {
        let (sg, sc) = (g.begin_step(&step), cpu.begin_step(&step));
        let cols = 3 * hd;
        let x = normals(&mut r, n * cols, 2.0);
        let (mut xg, mut xc) = (gpu_in(&g, n, cols, &x), cpu_in(&cpu, n, cols, &x));
        g.rope(&mut xg, hd, &spec, Some(&fg), &sg);
        cpu.rope(&mut xc, hd, &spec, Some(&fc), &sc);
        let e = max_rel(&g.read(&xg), &xc.data);
        println!("rope {label}: max rel err {e:.2e}");
        assert!(e <= 2e-6, "rope {label}: {e}");
    }
}

/// Two steps over two sequences with scattered blocks; returns (step infos).
fn attention_steps() -> (StepInfo, StepInfo) {
    // Step 1: sequence B's first 20 tokens. Step 2: sequence A's 37-token prompt and B's 21st.
    let table_a = vec![5u32, 2, 7];
    let table_b = vec![4u32, 0];
    let slot = |t: &[u32], p: usize| t[p / 16] * 16 + (p % 16) as u32;
    let s1 = StepInfo {
        tokens: vec![0; 20],
        positions: (0..20).collect(),
        slots: (0..20).map(|p| slot(&table_b, p)).collect(),
        seq_index: vec![0; 20],
        block_tables: vec![table_b.clone()],
        logit_rows: vec![19],
    };
    let mut s2 = StepInfo::default();
    for p in 0..37 {
        s2.tokens.push(0);
        s2.positions.push(p as u32);
        s2.slots.push(slot(&table_a, p));
        s2.seq_index.push(0);
    }
    s2.tokens.push(0);
    s2.positions.push(20);
    s2.slots.push(slot(&table_b, 20));
    s2.seq_index.push(1);
    s2.block_tables = vec![table_a, table_b];
    s2.logit_rows = vec![36, 37];
    (s1, s2)
}

#[test]
#[ignore = "needs CUDA"]
fn kv_write_and_paged_attention() {
    let (g, cpu) = (gpu(), CpuBackend::new());
    let (s1, s2) = attention_steps();
    let n_slots = 8 * 16;
    let geoms = [
        (8, 2, 64, None),
        (4, 1, 128, None),
        (2, 2, 256, Some(5)),
        (2, 1, 512, Some(16)),
        (6, 3, 96, Some(40)),
    ];
    for (k, (n_head, n_kv, hd, window)) in geoms.into_iter().enumerate() {
        let mut r = rng(300 + k as u64);
        let kv_dim = n_kv * hd;
        let mut kvg = g.alloc_kv(n_slots, kv_dim).unwrap();
        let mut kvc = cpu.alloc_kv(n_slots, kv_dim).unwrap();
        let geom = AttnGeom {
            n_head,
            n_kv_head: n_kv,
            head_dim: hd,
            window,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let mut out = (Vec::new(), Vec::new());
        for s in [&s1, &s2] {
            let n = s.tokens.len();
            let (sg, sc) = (g.begin_step(s), cpu.begin_step(s));
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
            let q = normals(&mut r, n * n_head * hd, 1.5);
            let mut og = gpu_out(&g, n, n_head * hd);
            let mut oc = cpu_out(&cpu, n, n_head * hd);
            g.attention(&gpu_in(&g, n, n_head * hd, &q), &kvg, geom, &sg, &mut og);
            cpu.attention(&cpu_in(&cpu, n, n_head * hd, &q), &kvc, geom, &sc, &mut oc);
            out = (g.read(&og), oc.data);
        }
        // The cache must hold the same f16 bits (f32 -> f16 round to nearest even on both).
        let (kg, vg) = g.read_kv(&kvg);
        let same_k = kg.iter().zip(&kvc.k).all(|(a, b)| *a == b.to_bits());
        let same_v = vg.iter().zip(&kvc.v).all(|(a, b)| *a == b.to_bits());
        assert!(same_k && same_v, "kv_write: pools differ from the CPU's");
        let e = max_rel(&out.0, &out.1);
        let exact = out
            .0
            .iter()
            .zip(&out.1)
            .filter(|(a, b)| a.to_bits() == b.to_bits())
            .count();
        println!(
            "attention heads {n_head}/{n_kv} hd {hd} window {window:?}: max err {e:.2e}, {exact}/{} bit-identical",
            out.0.len()
        );
        // Same math as the CPU; differences come only from f16 accumulator rounding flips.
        assert!(e <= 2e-3, "attention hd {hd}: {e}");
    }
}

#[test]
#[ignore = "needs CUDA"]
fn arena_overflows_then_grows_between_steps_with_stable_addresses() {
    let g = gpu();
    let step = simple_step(vec![0]);
    let _ = g.begin_step(&step);
    let (cap0, _) = g.arena_usage();
    // Three tensors of over half the arena each: the second and third overflow into their own
    // allocations for this step.
    let n = cap0 / 4 / 2 + 4096;
    let run = |g: &CudaBackend| -> Vec<u64> {
        let ts: Vec<CudaTensor> = (0..3)
            .map(|k| {
                let v: Vec<f32> = (0..n)
                    .map(|i| (i % 1000) as f32 + k as f32 * 0.25)
                    .collect();
                gpu_in(g, 1, n, &v)
            })
            .collect();
        for (k, t) in ts.iter().enumerate() {
            let back = g.read(t);
            assert!(
                back.iter()
                    .enumerate()
                    .all(|(i, &x)| x == (i % 1000) as f32 + k as f32 * 0.25),
                "tensor {k} corrupted"
            );
        }
        ts.iter().map(|t| t.device_ptr()).collect()
    };
    run(&g);
    let _ = g.begin_step(&step);
    let (cap1, _) = g.arena_usage();
    println!(
        "arena: {cap0} bytes, grew to {cap1} after a step that needed {} bytes",
        3 * n * 4
    );
    assert!(
        cap1 >= 3 * n * 4,
        "the arena did not grow to the last step's peak"
    );
    let a = run(&g);
    let _ = g.begin_step(&step);
    let b = run(&g);
    assert_eq!(
        a, b,
        "the same allocations should land at the same addresses step after step"
    );
    assert_eq!(g.arena_usage().0, cap1, "no growth once the arena fits");
}

/// Not a check: prints the achieved weight-read bandwidth of one-token matmuls (quantize +
/// matvec) on an 8B-sized FFN matrix, for the record.
#[test]
#[ignore = "needs CUDA"]
fn matvec_bandwidth_report() {
    let g = gpu();
    let (rows, cols) = (14336, 4096);
    for ty in [
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::F16,
    ] {
        let mut r = rng(7);
        let bytes = random_weight(ty, rows, cols, 0.02, &mut r);
        let n_bytes = bytes.len();
        let f = gguf(
            &[],
            vec![("w".into(), vec![cols as u64, rows as u64], ty, bytes)],
        );
        let w = g.upload(wref(&f, "w")).unwrap();
        let _ = g.begin_step(&simple_step(vec![0]));
        let x = gpu_in(&g, 1, cols, &normals(&mut r, cols, 1.0));
        let mut out = gpu_out(&g, 1, rows);
        for _ in 0..5 {
            g.matmul(&w, &x, &mut out);
        }
        g.synchronize();
        let iters = 50;
        let t = std::time::Instant::now();
        for _ in 0..iters {
            g.matmul(&w, &x, &mut out);
        }
        g.synchronize();
        let s = t.elapsed().as_secs_f64() / iters as f64;
        println!(
            "matvec {ty:>5} {rows}x{cols}: {:.1} us, {:.0} GB/s of weights",
            s * 1e6,
            n_bytes as f64 / s / 1e9
        );
    }
}
