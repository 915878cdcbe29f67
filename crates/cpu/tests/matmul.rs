//! Quantized matmul: every SIMD path against the scalar path (bit for bit), the scalar path
//! against the dequantized f64 reference, and matmul against per-row dots, on seeded random
//! non-zero data, over every route llama.cpp takes (`quant_dot::route`).
//!
//! Tolerances:
//! - SIMD vs scalar: none. The scalar functions define llama.cpp's summation order and the
//!   kernels reproduce it (integer parts are exact), so every output bit must agree.
//! - scalar vs f64 `Σ w_k·x̂_k` (dequantized weights × dequantized activations): f32 rounding,
//!   `≤ 1e-5 · mag`, plus for Q4_1 / Q5_1 the exactly computed effect of the f16 `s` field,
//!   `Σ_b |m_b| · |s_b − d_b·Σq_b|` (the kernels fold the min through `s`, §6.1).
//! - scalar vs f64 `Σ w_k·x_k` on the unquantized activations: the activation-quantization
//!   bound `Σ_blocks Σ_{i∈b} |w_i| · e_b + Σ_blocks |m_b|·32·amax_b·2⁻⁹ + 1e-5·mag`, with
//!   `e_b = 0.57·amax_b/127` for Q8_0 / Q8_1 (half a step plus the f16 rounding of `d`) and
//!   `0.51·amax_b/127` for Q8_K; the `m_b` term (Q4_1, Q5_1 only) covers the f16 `s` field.

use kestrel_cpu::ops::matmul::{dequantize_rows, matmul, matmul_with, supports, WeightMatrix};
use kestrel_cpu::quant_dot::acts::{
    quantize_row_q8_0, quantize_row_q8_1, quantize_row_q8_k, Q8kSign,
};
use kestrel_cpu::quant_dot::{self, scalar, ActFormat, Route, SimdLevel};
use kestrel_gguf::quant::{dequantize, f32_to_bf16, f32_to_f16};
use kestrel_gguf::GgmlType::{self, *};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const QUANT: [GgmlType; 10] = [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K];
const FLOAT: [GgmlType; 3] = [F32, F16, BF16];

/// Byte offsets of the f16 scale fields, and the byte range holding the codes, per block.
fn layout(ty: GgmlType) -> (&'static [usize], std::ops::Range<usize>) {
    match ty {
        Q4_0 => (&[0], 2..18),
        Q4_1 => (&[0, 2], 4..20),
        Q5_0 => (&[0], 2..22),
        Q5_1 => (&[0, 2], 4..24),
        Q8_0 => (&[0], 2..34),
        Q2_K => (&[80, 82], 16..80),
        Q3_K => (&[108], 0..96),
        Q4_K => (&[0, 2], 16..144),
        Q5_K => (&[0, 2], 16..176),
        Q6_K => (&[208], 0..192),
        _ => unreachable!(),
    }
}

/// Random weights: random bytes with the f16 scale fields set to ±U(0.01, 0.1); float types
/// get values in ±U(0, 1).
fn random_weights(ty: GgmlType, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    let n = rows * cols;
    match ty {
        F32 => (0..n)
            .flat_map(|_| rng.gen_range(-1.0f32..1.0).to_le_bytes())
            .collect(),
        F16 => (0..n)
            .flat_map(|_| f32_to_f16(rng.gen_range(-1.0f32..1.0)).to_le_bytes())
            .collect(),
        BF16 => (0..n)
            .flat_map(|_| f32_to_bf16(rng.gen_range(-1.0f32..1.0)).to_le_bytes())
            .collect(),
        _ => {
            let bytes = ty.row_bytes(cols as u64).unwrap() as usize * rows;
            let mut data: Vec<u8> = (0..bytes).map(|_| rng.gen()).collect();
            let (scales, _) = layout(ty);
            for blk in data.chunks_exact_mut(ty.type_size()) {
                for &o in scales {
                    let v = rng.gen_range(0.01f32..0.1) * if rng.gen() { 1.0 } else { -1.0 };
                    blk[o..o + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
                }
            }
            data
        }
    }
}

/// Activations: U(-1, 1) scaled per 32-element group by e^U(-2, 2) (so block scales vary).
fn random_acts(n: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut x = vec![0f32; n];
    for g in x.chunks_mut(32) {
        let s = rng.gen_range(-2.0f32..2.0).exp();
        for v in g {
            *v = rng.gen_range(-1.0f32..1.0) * s;
        }
    }
    x
}

fn deq(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    dequantize(ty, bytes, &mut out).unwrap();
    out
}

/// The constant part of each weight: the row dequantized with every code zeroed.
fn offsets(ty: GgmlType, row: &[u8], cols: usize) -> Vec<f32> {
    if !ty.is_quantized() {
        return vec![0.0; cols];
    }
    let (_, codes) = layout(ty);
    let mut z = row.to_vec();
    for blk in z.chunks_exact_mut(ty.type_size()) {
        blk[codes.clone()].fill(0);
    }
    deq(ty, &z, cols)
}

/// Activation row as the kernels see it, dequantized.
fn act_deq(fmt: ActFormat, x: &[f32]) -> Vec<f32> {
    let n = x.len();
    match fmt {
        ActFormat::F32 => x.to_vec(),
        ActFormat::Q8_0 => {
            let mut b = vec![0u8; n / 32 * 34];
            quantize_row_q8_0(x, &mut b);
            deq(Q8_0, &b, n)
        }
        ActFormat::Q8_1 => {
            let mut b = vec![0u8; n / 32 * 36];
            quantize_row_q8_1(x, &mut b);
            // Q8_1 dequantizes like Q8_0 (d, then codes); drop the s field.
            let b0: Vec<u8> = b
                .chunks_exact(36)
                .flat_map(|c| [&c[0..2], &c[4..36]].concat())
                .collect();
            deq(Q8_0, &b0, n)
        }
        ActFormat::Q8_K => {
            let mut b = vec![0u8; n / 256 * 292];
            quantize_row_q8_k(x, &mut b, Q8kSign::First);
            deq(Q8_K, &b, n)
        }
    }
}

/// Standard activation blocks of one row (what the scalar dots take), Q8_K with `sign`.
fn act_blocks(fmt: ActFormat, x: &[f32], sign: Q8kSign) -> Vec<u8> {
    let mut b = vec![0u8; x.len() / fmt.block() * fmt.block_bytes()];
    match fmt {
        ActFormat::Q8_0 => quantize_row_q8_0(x, &mut b),
        ActFormat::Q8_1 => quantize_row_q8_1(x, &mut b),
        ActFormat::Q8_K => quantize_row_q8_k(x, &mut b, sign),
        ActFormat::F32 => unreachable!(),
    }
    b
}

struct Case {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    w: Vec<u8>,
    x: Vec<f32>,
    n_tokens: usize,
}

impl Case {
    fn new(ty: GgmlType, rows: usize, cols: usize, n_tokens: usize, seed: u64) -> Case {
        let mut rng = StdRng::seed_from_u64(seed ^ (ty as u64) << 32);
        let w = random_weights(ty, rows, cols, &mut rng);
        let x = random_acts(n_tokens * cols, &mut rng);
        Case {
            ty,
            rows,
            cols,
            w,
            x,
            n_tokens,
        }
    }

    fn matrix(&self) -> WeightMatrix<'_> {
        WeightMatrix {
            ty: self.ty,
            data: &self.w,
            rows: self.rows,
            cols: self.cols,
        }
    }

    fn run(&self, level: SimdLevel) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.n_tokens * self.rows];
        matmul_with(level, &self.matrix(), &self.x, self.n_tokens, &mut out);
        out
    }

    /// `mag[t * rows + r] = Σ_k (|w_k| + |o_k|)·|x̂_k|`.
    fn magnitudes(&self) -> Vec<f32> {
        let fmt = ActFormat::for_weight(self.ty).unwrap();
        let m = self.matrix();
        let mut mag = vec![0f32; self.n_tokens * self.rows];
        for r in 0..self.rows {
            let w = deq(self.ty, m.row(r), self.cols);
            let o = offsets(self.ty, m.row(r), self.cols);
            for t in 0..self.n_tokens {
                let xa = act_deq(fmt, &self.x[t * self.cols..(t + 1) * self.cols]);
                mag[t * self.rows + r] = (0..self.cols)
                    .map(|k| (w[k].abs() + o[k].abs()) * xa[k].abs())
                    .sum();
            }
        }
        mag
    }
}

fn simd_levels() -> Vec<SimdLevel> {
    [SimdLevel::Avx2, SimdLevel::Avx512]
        .into_iter()
        .filter(|&l| l <= quant_dot::detected())
        .collect()
}

/// Asserts `|got − want| ≤ rel·mag` elementwise; returns the largest `|got − want| / mag`.
fn assert_close(what: &str, got: &[f32], want: &[f32], mag: &[f32], rel: f32) -> f32 {
    let mut worst = 0f32;
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = rel * m + 1e-30;
        assert!(
            (g - w).abs() <= tol && g.is_finite(),
            "{what}: element {i}: got {g}, want {w}, |diff| {} > tol {tol} (mag {m})",
            (g - w).abs()
        );
        worst = worst.max((g - w).abs() / m);
    }
    worst
}

fn cols_for(ty: GgmlType) -> Vec<usize> {
    match ty.block_size() {
        // 66 blocks: more than one 64-block offset chunk, and not a multiple of 8.
        32 => vec![96, 2112],
        256 => vec![256, 1280],
        // Float types: tails of 8 and 16.
        _ => vec![37, 200],
    }
}

/// Asserts every output bit agrees.
fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: element {i}: got {g} ({:#010x}), want {w} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

#[test]
fn simd_paths_equal_scalar_bit_for_bit_on_every_route() {
    let levels = simd_levels();
    eprintln!("detected {:?}, testing {:?}", quant_dot::detected(), levels);
    for ty in QUANT.into_iter().chain(FLOAT) {
        let mut routes = std::collections::BTreeSet::new();
        for cols in cols_for(ty) {
            // 37 rows: the vec_dot / tiled routes; 40 (a multiple of 8): repacked Q4_0 / Q4_K.
            for rows in [37, 40] {
                // Tiles of 4 and 8, partial tiles, the GEMM / GEMV split (n − n%4), 8+ tokens.
                for n_tokens in [1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 17] {
                    let case = Case::new(ty, rows, cols, n_tokens, 1);
                    routes.insert(format!("{:?}", quant_dot::route(ty, rows, n_tokens)));
                    let want = case.run(SimdLevel::Scalar);
                    for &level in &levels {
                        let got = case.run(level);
                        if ty.is_quantized() {
                            let what = format!("{ty} {level:?} {rows}x{cols} tokens {n_tokens}");
                            assert_bits(&what, &got, &want);
                        } else {
                            // Float types keep their own f32 order (not llama.cpp's).
                            let what = format!("{ty} {level:?} cols {cols} tokens {n_tokens}");
                            assert_close(&what, &got, &want, &case.magnitudes(), 1e-5);
                        }
                    }
                }
            }
        }
        eprintln!("{ty}: routes {routes:?} exact on {levels:?}");
    }
}

#[test]
fn routes_follow_llama_cpp() {
    use Route::*;
    for (ty, rows, n, want) in [
        (Q5_0, 896, 1, VecDot),
        (Q5_0, 896, 512, VecDot),
        (Q8_0, 128, 37, VecDot),
        (Q4_1, 64, 9, VecDot),
        (Q4_0, 64, 1, Repacked),
        (Q4_0, 66, 9, VecDot),
        (Q4_K, 896, 5, Repacked),
        (Q4_K, 4, 5, VecDot),
        (Q4_K, 4, 8, Tiled),
        (Q6_K, 896, 7, VecDot),
        (Q6_K, 896, 8, Tiled),
        (Q2_K, 896, 8, Tiled),
        (Q5_K, 256, 3, VecDot),
        (F16, 64, 9, VecDot),
    ] {
        assert_eq!(
            quant_dot::route(ty, rows, n),
            want,
            "{ty} {rows} rows {n} tokens"
        );
    }
    assert_eq!(quant_dot::gemm_tokens(Repacked, 3), 0);
    assert_eq!(quant_dot::gemm_tokens(Repacked, 5), 4);
    assert_eq!(quant_dot::gemm_tokens(Repacked, 12), 12);
    assert_eq!(quant_dot::gemm_tokens(Tiled, 12), 0);
}

#[test]
fn scalar_matches_dequantized_reference_within_activation_quantization_error() {
    for ty in QUANT.into_iter().chain(FLOAT) {
        let fmt = ActFormat::for_weight(ty).unwrap();
        for cols in cols_for(ty) {
            let case = Case::new(ty, 24, cols, 3, 2);
            let got = case.run(SimdLevel::Scalar);
            let mag = case.magnitudes();
            let m = case.matrix();
            let blk = fmt.block();
            let e_rel = if fmt == ActFormat::Q8_K { 0.51 } else { 0.57 };
            let mut worst = 0f64;
            for r in 0..case.rows {
                let w = deq(ty, m.row(r), cols);
                for t in 0..case.n_tokens {
                    let x = &case.x[t * cols..(t + 1) * cols];
                    let exact: f64 = w.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let mut bound = 1e-5 * mag[t * case.rows + r] as f64;
                    if fmt != ActFormat::F32 {
                        for (b, (xb, wb)) in x.chunks(blk).zip(w.chunks(blk)).enumerate() {
                            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                            let wsum: f64 = wb.iter().map(|v| v.abs() as f64).sum();
                            bound += wsum * e_rel * amax / 127.0;
                            if fmt == ActFormat::Q8_1 {
                                let blkw = &m.row(r)[b * ty.type_size()..];
                                let mw = kestrel_gguf::quant::f16_to_f32(u16::from_le_bytes([
                                    blkw[2], blkw[3],
                                ]));
                                bound += mw.abs() as f64 * 32.0 * amax * 2f64.powi(-9);
                            }
                        }
                    }
                    let g = got[t * case.rows + r] as f64;
                    let err = (g - exact).abs();
                    assert!(err <= bound, "{ty} cols {cols} row {r} tok {t}: got {g}, exact {exact}, err {err} > bound {bound}");
                    let norm = w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt()
                        * x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                    worst = worst.max(err / norm);
                }
            }
            eprintln!("{ty} cols {cols}: max |scalar − exact| / (‖w‖·‖x‖) = {worst:.2e}");
        }
    }
}

#[test]
fn scalar_equals_dequantized_dot_within_f32_rounding() {
    for ty in QUANT.into_iter().chain(FLOAT) {
        let fmt = ActFormat::for_weight(ty).unwrap();
        for cols in cols_for(ty) {
            let case = Case::new(ty, 16, cols, 2, 6);
            let got = case.run(SimdLevel::Scalar);
            let mag = case.magnitudes();
            let m = case.matrix();
            let mut worst = 0f64;
            for t in 0..case.n_tokens {
                let x = &case.x[t * cols..(t + 1) * cols];
                let xa = act_deq(fmt, x);
                let blocks = if fmt == ActFormat::F32 {
                    Vec::new()
                } else {
                    act_blocks(fmt, x, Q8kSign::First)
                };
                for r in 0..case.rows {
                    let w = deq(ty, m.row(r), cols);
                    let want: f64 = w.iter().zip(&xa).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let mut tol = 1e-5 * mag[t * case.rows + r] as f64;
                    if fmt == ActFormat::Q8_1 {
                        for (b, ab) in blocks.chunks_exact(36).enumerate() {
                            let h = |o: usize| {
                                kestrel_gguf::quant::f16_to_f32(u16::from_le_bytes([
                                    ab[o],
                                    ab[o + 1],
                                ])) as f64
                            };
                            let sum: f64 = ab[4..36].iter().map(|&q| q as i8 as f64).sum();
                            let wb = &m.row(r)[b * ty.type_size()..];
                            let mw =
                                kestrel_gguf::quant::f16_to_f32(u16::from_le_bytes([wb[2], wb[3]]))
                                    as f64;
                            tol += mw.abs() * (h(2) - h(0) * sum).abs();
                        }
                    }
                    let g = got[t * case.rows + r] as f64;
                    assert!(
                        (g - want).abs() <= tol,
                        "{ty} cols {cols} row {r} tok {t}: scalar {g}, dequantized dot {want}, tol {tol}"
                    );
                    worst = worst.max((g - want).abs() / mag[t * case.rows + r] as f64);
                }
            }
            eprintln!("{ty} cols {cols}: max |scalar − deq·deq| / mag = {worst:.2e}");
        }
    }
}

#[test]
fn matmul_matches_per_row_dots_on_odd_shapes() {
    let mut levels = vec![SimdLevel::Scalar];
    levels.extend(simd_levels());
    // Rows: below one task, not a multiple of the task size; tokens: partial tiles.
    for (ty, rows, cols) in [
        (Q5_0, 300, 64),
        (Q6_K, 45, 512),
        (Q4_K, 1, 256),
        (Q4_K, 24, 512),
        (Q4_0, 16, 64),
        (Q8_0, 5, 32),
        (Q4_1, 17, 96),
        (F16, 33, 24),
    ] {
        for n_tokens in [1, 3, 8, 17] {
            let case = Case::new(ty, rows, cols, n_tokens, 3);
            let mag = case.magnitudes();
            let fmt = ActFormat::for_weight(ty).unwrap();
            let m = case.matrix();
            let route = quant_dot::route(ty, rows, n_tokens);
            let n_gemm = quant_dot::gemm_tokens(route, n_tokens);
            let mut want = vec![0f32; n_tokens * rows];
            for t in 0..n_tokens {
                let x = &case.x[t * cols..(t + 1) * cols];
                let sign = if t < n_gemm {
                    Q8kSign::PreferPositive
                } else {
                    Q8kSign::First
                };
                for r in 0..rows {
                    want[t * rows + r] = match fmt {
                        ActFormat::F32 => scalar::float_dot_fn(ty).unwrap()(m.row(r), x),
                        _ => scalar::quant_dot(
                            ty,
                            route,
                            t < n_gemm,
                            m.row(r),
                            &act_blocks(fmt, x, sign),
                        )
                        .unwrap(),
                    };
                }
            }
            for &level in &levels {
                let got = case.run(level);
                let what = format!("{ty} {level:?} rows {rows} tokens {n_tokens}");
                if level == SimdLevel::Scalar || ty.is_quantized() {
                    assert_bits(&what, &got, &want);
                } else {
                    assert_close(&what, &got, &want, &mag, 1e-5);
                }
            }
        }
    }
}

#[test]
fn default_matmul_uses_a_supported_path() {
    let case = Case::new(Q4_K, 20, 256, 2, 4);
    let mut out = vec![0f32; 40];
    matmul(&case.matrix(), &case.x, 2, &mut out);
    let want = case.run(SimdLevel::Scalar);
    assert_bits("default path", &out, &want);
    assert!(quant_dot::selected() <= quant_dot::detected());
    assert!(supports(Q6_K) && supports(BF16) && !supports(Q8_K) && !supports(IQ4_NL));
}

#[test]
fn simd_level_names_parse() {
    for l in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512] {
        assert_eq!(SimdLevel::from_name(l.name()), Some(l));
    }
    assert_eq!(SimdLevel::from_name("AVX512"), Some(SimdLevel::Avx512));
    assert_eq!(SimdLevel::from_name("sse"), None);
}

#[test]
fn dequantize_rows_matches_reference() {
    for ty in [Q8_0, Q5_0, Q6_K, Q4_K, F32, F16] {
        let cols = 256;
        let case = Case::new(ty, 10, cols, 1, 5);
        let m = case.matrix();
        let ids = [3u32, 0, 9, 3];
        let mut out = vec![0f32; ids.len() * cols];
        dequantize_rows(&m, &ids, &mut out);
        for (i, &r) in ids.iter().enumerate() {
            assert_eq!(
                &out[i * cols..(i + 1) * cols],
                &deq(ty, m.row(r as usize), cols)[..],
                "{ty} row {r}"
            );
        }
    }
}

#[test]
#[should_panic(expected = "not supported")]
fn unsupported_type_panics() {
    let data = [0u8; 18];
    let m = WeightMatrix {
        ty: IQ4_NL,
        data: &data,
        rows: 1,
        cols: 32,
    };
    matmul(&m, &[0.0; 32], 1, &mut [0.0]);
}

/// Each token of a chunked call gets the bits of its chunk run alone, whatever route its
/// neighbours take: chunks of every size class (decode, GEMV remainder, repacked GEMM, tiled),
/// a chunk only partly in the call (a prompt split over steps), interleaved.
#[test]
fn chunked_matmul_gives_each_token_its_lone_chunk_bits() {
    use kestrel_cpu::ops::matmul::matmul_chunked;
    use kestrel_engine::Chunk;
    let mut rng = StdRng::seed_from_u64(0xc4);
    // (chunk length, indices present in the call)
    let plan: &[(u32, &[u32])] = &[
        (1, &[0]),
        (13, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
        (1, &[0]),
        (9, &[2, 3, 4, 8]),
        (3, &[0, 1, 2]),
        (6, &[1, 4, 5]),
        (1, &[0]),
    ];
    let chunks: Vec<Chunk> = plan
        .iter()
        .flat_map(|&(len, idx)| idx.iter().map(move |&index| Chunk { len, index }))
        .collect();
    let n = chunks.len();
    for ty in [Q4_0, Q4_K, Q6_K, Q8_0, Q5_K, Q2_K, F16] {
        for rows in [16, 20] {
            let cols = 256;
            let wb = random_weights(ty, rows, cols, &mut rng);
            let w = WeightMatrix {
                ty,
                data: &wb,
                rows,
                cols,
            };
            // Each chunk's full activations; the call takes the rows `plan` names.
            let full: Vec<Vec<f32>> = plan
                .iter()
                .map(|&(len, _)| random_acts(len as usize * cols, &mut rng))
                .collect();
            let mut x = Vec::new();
            for (&(_, idx), a) in plan.iter().zip(&full) {
                for &i in idx {
                    x.extend_from_slice(&a[i as usize * cols..(i as usize + 1) * cols]);
                }
            }
            let mut got = vec![f32::NAN; n * rows];
            matmul_chunked(&w, &x, &chunks, &mut got);
            let mut t = 0;
            for (&(len, idx), a) in plan.iter().zip(&full) {
                let mut alone = vec![f32::NAN; len as usize * rows];
                matmul(&w, a, len as usize, &mut alone);
                for &i in idx {
                    let i = i as usize;
                    assert_bits(
                        &format!("{ty} rows {rows}, chunk of {len}, token {i}"),
                        &got[t * rows..(t + 1) * rows],
                        &alone[i * rows..(i + 1) * rows],
                    );
                    t += 1;
                }
            }
        }
    }
}

/// `bulk_of_chunk` (what prefix reuse trusts) names exactly tokens whose route is the same in
/// every chunk: the one a token deep inside a long chunk takes.
#[test]
fn bulk_tokens_take_one_route_for_every_chunk_length() {
    use kestrel_cpu::quant_dot::bulk_of_chunk;
    let mode = |ty, rows, len: usize, index: usize| {
        let route = quant_dot::route(ty, rows, len);
        (route, index < quant_dot::gemm_tokens(route, len))
    };
    for ty in [
        Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, F16, BF16, F32,
    ] {
        for rows in [16, 20] {
            let bulk = mode(ty, rows, 512, 0);
            for len in 1..48 {
                for index in 0..len {
                    if bulk_of_chunk(len, index) {
                        assert_eq!(
                            mode(ty, rows, len, index),
                            bulk,
                            "{ty} {rows} {len} {index}"
                        );
                    }
                }
            }
        }
    }
}
