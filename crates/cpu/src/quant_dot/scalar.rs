//! Scalar dot products: the definition of the math, route by route (see `quant_dot`).
//!
//! Each function takes one weight row `w` (whole blocks of the type) and one activation row `a`
//! in the paired format's standard blocks (Q8_0 / Q8_1 / Q8_K, or f32 for the float types)
//! covering the same elements, and returns exactly what llama.cpp's kernel on that route
//! returns: the integer parts are exact (i32), and every f32 operation is the one llama.cpp's
//! build performs, in its order; `mul_add` marks an FMA (intrinsic, or contracted by GCC).

use kestrel_gguf::quant::{
    bf16_to_f32, f16_to_f32, k4_scale_min, legacy_code5, legacy_nibble, q3k_scale,
};
use kestrel_gguf::GgmlType;

use super::{Acts, Route, RowKernel};

#[inline]
fn f16(b: &[u8], off: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[off], b[off + 1]]))
}

#[inline]
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Blocks of `w` (`wb` bytes each) paired with blocks of `a` (`ab` bytes each).
fn blocks<'x>(
    w: &'x [u8],
    wb: usize,
    a: &'x [u8],
    ab: usize,
) -> impl Iterator<Item = (&'x [u8], &'x [u8])> {
    assert!(
        w.len().is_multiple_of(wb) && a.len().is_multiple_of(ab) && w.len() / wb == a.len() / ab,
        "vec_dot: {} weight bytes (blocks of {wb}) do not pair with {} activation bytes (blocks of {ab})",
        w.len(),
        a.len()
    );
    w.chunks_exact(wb).zip(a.chunks_exact(ab))
}

/// Activation codes of a Q8_0 (`off` = 2), Q8_1 (4) or Q8_K (4) block.
#[inline]
fn q8(a: &[u8], off: usize, i: usize) -> i32 {
    a[off + i] as i8 as i32
}

/// `hsum_float_8` / `_mm512`-free tinyBLAS `hsum`: `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
#[inline]
pub fn hsum8(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

// ---------------------------------------------------------------------------------------------
// Legacy 32-element blocks.

/// The 32 weight values of a legacy block that multiply the activation codes: signed
/// (`c − 8`, `c − 16`, the int8 code) for Q4_0 / Q5_0 / Q8_0, the unsigned code for Q4_1 / Q5_1.
fn legacy_values(ty: GgmlType, wb: &[u8]) -> [i32; 32] {
    use GgmlType::*;
    core::array::from_fn(|i| match ty {
        Q4_0 => legacy_nibble(&wb[2..18], i) as i32 - 8,
        Q4_1 => legacy_nibble(&wb[4..20], i) as i32,
        Q5_0 => legacy_code5(u32_at(wb, 2), &wb[6..22], i) as i32 - 16,
        Q5_1 => legacy_code5(u32_at(wb, 4), &wb[8..24], i) as i32,
        Q8_0 => wb[2 + i] as i8 as i32,
        _ => unreachable!("{ty} is not a legacy type"),
    })
}

/// Lane `k` = the products of elements `4k..4k+3`.
fn lanes32(w: &[i32; 32], a: &[u8], off: usize) -> [i32; 8] {
    core::array::from_fn(|k| (4 * k..4 * k + 4).map(|i| w[i] * q8(a, off, i)).sum())
}

/// Q4_0 / Q5_0 / Q8_0 × Q8_0 on [`Route::VecDot`] (`ggml_vec_dot_q*_0_q8_0`, tinyBLAS_Q0_AVX):
/// per block `acc[k] = fma(d_w·d_a, lane_k, acc[k])`, then [`hsum8`].
pub fn vec_dot_q0(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    for (wb, ab) in blocks(w, ty.type_size(), a, 34) {
        let l = lanes32(&legacy_values(ty, wb), ab, 2);
        let d = f16(wb, 0) * f16(ab, 0);
        for k in 0..8 {
            acc[k] = d.mul_add(l[k] as f32, acc[k]);
        }
    }
    hsum8(acc)
}

/// Q4_0 × Q8_0 on [`Route::Repacked`] (q4_0_8x8 GEMV and GEMM): per block
/// `acc = fma(I, d_w·d_a, acc)` with `I` the whole block's integer dot.
pub fn repacked_q4_0(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = 0f32;
    for (wb, ab) in blocks(w, 18, a, 34) {
        let i: i32 = lanes32(&legacy_values(GgmlType::Q4_0, wb), ab, 2)
            .iter()
            .sum();
        acc = (i as f32).mul_add(f16(wb, 0) * f16(ab, 0), acc);
    }
    acc
}

/// Q4_1 / Q5_1 × Q8_1 (`ggml_vec_dot_q4_1_q8_1`, `_q5_1_q8_1`; no tinyBLAS): per block
/// `acc[k] = fma(d_w·d_a, lane_k, acc[k])` on the unsigned codes and `summs = fma(m_w, s_a,
/// summs)`; result `hsum8(acc) + summs`.
pub fn vec_dot_q1(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (wb, ab) in blocks(w, ty.type_size(), a, 36) {
        summs = f16(wb, 2).mul_add(f16(ab, 2), summs);
        let l = lanes32(&legacy_values(ty, wb), ab, 4);
        let d = f16(wb, 0) * f16(ab, 0);
        for k in 0..8 {
            acc[k] = d.mul_add(l[k] as f32, acc[k]);
        }
    }
    hsum8(acc) + summs
}

// ---------------------------------------------------------------------------------------------
// K-quant super-blocks.

/// One K-quant super-block, decoded.
struct KBlock {
    /// The value that multiplies activation code `e` inside the integer dot: the unsigned code
    /// (Q2_K, Q4_K, Q5_K, Q6_K: 0..63) or, for Q3_K, the signed `lo2 − 4·(1 − hb)`.
    v: [i32; 256],
    /// Scale of each 16-element group (Q4_K / Q5_K: the 32-element sub-block's, twice).
    sc: [i32; 16],
    /// Min of each 16-element group (Q2_K; Q4_K / Q5_K: the sub-block's, twice), else 0.
    mn: [i32; 16],
    /// Constant subtracted from `v` through the bsums (Q6_K: 32), else 0.
    off: i32,
    d: f32,
    dmin: f32,
}

fn kdecode(ty: GgmlType, wb: &[u8]) -> KBlock {
    use GgmlType::*;
    let mut k = KBlock {
        v: [0; 256],
        sc: [0; 16],
        mn: [0; 16],
        off: 0,
        d: 0.0,
        dmin: 0.0,
    };
    match ty {
        Q2_K => {
            let (scales, qs) = (&wb[0..16], &wb[16..80]);
            for i in 0..256 {
                let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
                k.v[i] = ((qs[32 * h + l] >> (2 * s)) & 3) as i32;
            }
            for (j, &sm) in scales.iter().enumerate() {
                k.sc[j] = (sm & 0xF) as i32;
                k.mn[j] = (sm >> 4) as i32;
            }
            k.d = f16(wb, 80);
            k.dmin = f16(wb, 82);
        }
        Q3_K => {
            let (hmask, qs, scales) = (&wb[0..32], &wb[32..96], &wb[96..108]);
            for i in 0..256 {
                let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
                let lo2 = ((qs[32 * h + l] >> (2 * s)) & 3) as i32;
                let hb = ((hmask[l] >> (i / 32)) & 1) as i32;
                k.v[i] = lo2 - 4 * (1 - hb);
            }
            for j in 0..16 {
                k.sc[j] = q3k_scale(scales, j) as i32;
            }
            k.d = f16(wb, 108);
        }
        Q4_K | Q5_K => {
            let scales = &wb[4..16];
            for j in 0..8 {
                let (s, m) = k4_scale_min(scales, j);
                k.sc[2 * j] = s as i32;
                k.sc[2 * j + 1] = s as i32;
                k.mn[2 * j] = m as i32;
                k.mn[2 * j + 1] = m as i32;
            }
            if ty == Q4_K {
                let qs = &wb[16..144];
                for i in 0..256 {
                    k.v[i] = ((qs[32 * (i / 64) + i % 32] >> (4 * ((i / 32) % 2))) & 0xF) as i32;
                }
            } else {
                let (qh, qs) = (&wb[16..48], &wb[48..176]);
                for i in 0..256 {
                    let lo = (qs[32 * (i / 64) + i % 32] >> (4 * ((i / 32) % 2))) & 0xF;
                    k.v[i] = (lo | (((qh[i % 32] >> (i / 32)) & 1) << 4)) as i32;
                }
            }
            k.d = f16(wb, 0);
            k.dmin = f16(wb, 2);
        }
        Q6_K => {
            let (ql, qh, scales) = (&wb[0..128], &wb[128..192], &wb[192..208]);
            for i in 0..256 {
                let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
                let lo4 = (ql[64 * h + 32 * (s % 2) + l] >> (4 * (s / 2))) & 0xF;
                let hi2 = (qh[32 * h + l] >> (2 * s)) & 3;
                k.v[i] = (lo4 | (hi2 << 4)) as i32;
            }
            for (sc, &s) in k.sc.iter_mut().zip(scales) {
                *sc = s as i8 as i32;
            }
            k.off = 32;
            k.d = f16(wb, 208);
        }
        _ => unreachable!("{ty} is not a K-quant"),
    }
    k
}

/// The Q8_K block's `d`, codes and bsums.
struct Q8k<'x> {
    d: f32,
    a: &'x [u8],
}

impl Q8k<'_> {
    #[inline]
    fn q(&self, i: usize) -> i32 {
        q8(self.a, 4, i)
    }
    #[inline]
    fn bs(&self, g: usize) -> i32 {
        i16::from_le_bytes([self.a[260 + 2 * g], self.a[261 + 2 * g]]) as i32
    }
}

impl KBlock {
    /// `Σ sc·v·q` over elements `range`.
    fn dot(&self, y: &Q8k, range: std::ops::Range<usize>) -> i32 {
        range.map(|e| self.sc[e / 16] * self.v[e] * y.q(e)).sum()
    }

    /// `Σ_g off·sc_g·bs_g` over the 16-element groups `groups`.
    fn offset(&self, y: &Q8k, groups: std::ops::Range<usize>) -> i32 {
        groups.map(|g| self.off * self.sc[g] * y.bs(g)).sum()
    }

    /// `Σ_g mn_g·bs_g` over the 16-element groups `groups`.
    fn mins(&self, y: &Q8k, groups: std::ops::Range<usize>) -> i32 {
        groups.map(|g| self.mn[g] * y.bs(g)).sum()
    }

    /// The vec_dot lanes: lane `k` covers bytes `4k..4k+3` of every 32-element chunk, minus the
    /// offset of groups `2k`, `2k+1` (Q6_K's `q8sclsub`).
    fn lanes(&self, y: &Q8k) -> [i32; 8] {
        core::array::from_fn(|k| {
            let l: i32 = (0..8)
                .map(|c| self.dot(y, 32 * c + 4 * k..32 * c + 4 * k + 4))
                .sum();
            l - self.offset(y, 2 * k..2 * k + 2)
        })
    }

    /// The whole super-block's integer dot `I` (offsets included).
    fn total(&self, y: &Q8k) -> i32 {
        self.dot(y, 0..256) - self.offset(y, 0..16)
    }
}

/// A K-quant × Q8_K on [`Route::VecDot`] (`ggml_vec_dot_<type>_q8_K`). With
/// `d = d_a·d_w`, `dmn = (−d_a)·dmin` and the lanes of [`KBlock::lanes`], per block:
/// - Q2_K: `acc[k] = fma(dmn, P_k, acc[k])` (`P_k` = mins · bsums of groups `2k`, `2k+1`),
///   then `acc[k] = fma(d, lane_k, acc[k])`; result `hsum8(acc)`;
/// - Q3_K, Q6_K: `acc[k] = fma(d, lane_k, acc[k])`; result `hsum8(acc)`;
/// - Q4_K: `accm[j] = fma(dmn, P4_j, accm[j])` (4 lanes, `P4_j` = mins · bsums of groups
///   `4j..4j+4`), `acc[k] = fma(d, lane_k, acc[k])`; result
///   `hsum8(acc) + ((accm0 + accm2) + (accm1 + accm3))`;
/// - Q5_K: `summs = fma(M, dmn, summs)` (`M` = all mins · bsums), `acc[k] = fma(d, lane_k,
///   acc[k])`; result `hsum8(acc) + summs`.
pub fn vec_dot_k(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
    use GgmlType::*;
    let mut acc = [0f32; 8];
    let mut accm = [0f32; 4];
    let mut summs = 0f32;
    for (wb, ab) in blocks(w, ty.type_size(), a, 292) {
        let k = kdecode(ty, wb);
        let y = Q8k {
            d: f32::from_le_bytes([ab[0], ab[1], ab[2], ab[3]]),
            a: ab,
        };
        let d = y.d * k.d;
        let dmn = -y.d * k.dmin;
        match ty {
            Q2_K => {
                for (j, m) in acc.iter_mut().enumerate() {
                    *m = dmn.mul_add(k.mins(&y, 2 * j..2 * j + 2) as f32, *m);
                }
            }
            Q4_K => {
                for (j, m) in accm.iter_mut().enumerate() {
                    *m = dmn.mul_add(k.mins(&y, 4 * j..4 * j + 4) as f32, *m);
                }
            }
            Q5_K => summs = (k.mins(&y, 0..16) as f32).mul_add(dmn, summs),
            _ => {}
        }
        let l = k.lanes(&y);
        for j in 0..8 {
            acc[j] = d.mul_add(l[j] as f32, acc[j]);
        }
    }
    match ty {
        Q4_K => hsum8(acc) + ((accm[0] + accm[2]) + (accm[1] + accm[3])),
        Q5_K => hsum8(acc) + summs,
        _ => hsum8(acc),
    }
}

/// A K-quant × Q8_K on [`Route::Tiled`]: per block `r = I·d_w` (with mins: `r = I·d_w −
/// dmin·M` in one fnmadd), `acc = fma(r, d_a, acc)`.
pub fn tiled_k(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = 0f32;
    for (wb, ab) in blocks(w, ty.type_size(), a, 292) {
        let k = kdecode(ty, wb);
        let y = Q8k {
            d: f32::from_le_bytes([ab[0], ab[1], ab[2], ab[3]]),
            a: ab,
        };
        let mut r = k.total(&y) as f32 * k.d;
        if has_min(ty) {
            r = (-k.dmin).mul_add(k.mins(&y, 0..16) as f32, r);
        }
        acc = r.mul_add(y.d, acc);
    }
    acc
}

/// Q2_K, Q4_K and Q5_K carry mins.
fn has_min(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q2_K | GgmlType::Q4_K | GgmlType::Q5_K)
}

/// Q4_K × Q8_K on [`Route::Repacked`]: the q4_K_8x8 GEMV (`gemm` false: per block) or GEMM
/// (per 64 elements): `acc = fma(I, d_w·d_a, acc)`, `accm = fma(M, dmin·d_a, accm)`; result
/// `acc − accm`.
pub fn repacked_q4_k(w: &[u8], a: &[u8], gemm: bool) -> f32 {
    let (mut acc, mut accm) = (0f32, 0f32);
    for (wb, ab) in blocks(w, 144, a, 292) {
        let k = kdecode(GgmlType::Q4_K, wb);
        let y = Q8k {
            d: f32::from_le_bytes([ab[0], ab[1], ab[2], ab[3]]),
            a: ab,
        };
        let (s, sm) = (k.d * y.d, k.dmin * y.d);
        let parts = if gemm { 4 } else { 1 };
        let n = 256 / parts;
        for p in 0..parts {
            let i = k.dot(&y, n * p..n * (p + 1));
            let m = k.mins(&y, n / 16 * p..n / 16 * (p + 1));
            acc = (i as f32).mul_add(s, acc);
            accm = (m as f32).mul_add(sm, accm);
        }
    }
    acc - accm
}

// ---------------------------------------------------------------------------------------------
// Float weights.

/// F32 × f32, summed in element order.
pub fn vec_dot_f32(w: &[u8], a: &[f32]) -> f32 {
    assert_eq!(w.len(), a.len() * 4, "vec_dot_f32: length mismatch");
    w.chunks_exact(4)
        .zip(a)
        .map(|(b, &x)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * x)
        .sum()
}

/// F16 × f32: weights widened exactly to f32, products and sums in f32 (activations are not
/// rounded to f16).
pub fn vec_dot_f16(w: &[u8], a: &[f32]) -> f32 {
    assert_eq!(w.len(), a.len() * 2, "vec_dot_f16: length mismatch");
    w.chunks_exact(2).zip(a).map(|(b, &x)| f16(b, 0) * x).sum()
}

/// BF16 × f32: weights widened exactly to f32, products and sums in f32.
pub fn vec_dot_bf16(w: &[u8], a: &[f32]) -> f32 {
    assert_eq!(w.len(), a.len() * 2, "vec_dot_bf16: length mismatch");
    w.chunks_exact(2)
        .zip(a)
        .map(|(b, &x)| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])) * x)
        .sum()
}

// ---------------------------------------------------------------------------------------------

/// The dot of one weight row of quantized type `ty` with one activation row of standard blocks,
/// as llama.cpp computes it on `route`; `gemm` selects the GEMM of [`Route::Repacked`].
/// `None` for types without matmul support.
pub fn quant_dot(ty: GgmlType, route: Route, gemm: bool, w: &[u8], a: &[u8]) -> Option<f32> {
    use GgmlType::*;
    Some(match (ty, route) {
        (Q4_0, Route::Repacked) => repacked_q4_0(w, a),
        (Q4_0 | Q5_0 | Q8_0, _) => vec_dot_q0(ty, w, a),
        (Q4_1 | Q5_1, _) => vec_dot_q1(ty, w, a),
        (Q4_K, Route::Repacked) => repacked_q4_k(w, a, gemm),
        (Q2_K | Q3_K | Q4_K | Q5_K | Q6_K, Route::Tiled) => tiled_k(ty, w, a),
        (Q2_K | Q3_K | Q4_K | Q5_K | Q6_K, _) => vec_dot_k(ty, w, a),
        _ => return None,
    })
}

/// `vec_dot_<float type>(weight row, f32 activations)`.
pub type FloatDot = fn(&[u8], &[f32]) -> f32;

/// The scalar dot for a float weight type against f32 activations.
pub fn float_dot_fn(ty: GgmlType) -> Option<FloatDot> {
    Some(match ty {
        GgmlType::F32 => vec_dot_f32,
        GgmlType::F16 => vec_dot_f16,
        GgmlType::BF16 => vec_dot_bf16,
        _ => return None,
    })
}

/// Row kernel for the scalar path (one dot per token).
pub(crate) fn row_kernel(ty: GgmlType, route: Route) -> Option<RowKernel> {
    use GgmlType::*;
    macro_rules! float {
        ($f:ident) => {{
            unsafe fn kernel(
                w: &[u8],
                acts: &Acts,
                t0: usize,
                nt: usize,
                out: *mut f32,
                os: usize,
            ) {
                for i in 0..nt {
                    // SAFETY: the caller guarantees `nt` writes `os` apart.
                    unsafe { *out.add(i * os) = $f(w, acts.x_row(t0 + i)) };
                }
            }
            kernel as RowKernel
        }};
    }
    macro_rules! quant {
        ($ty:expr, $route:expr) => {{
            unsafe fn kernel(
                w: &[u8],
                acts: &Acts,
                t0: usize,
                nt: usize,
                out: *mut f32,
                os: usize,
            ) {
                for i in 0..nt {
                    let t = t0 + i;
                    let v = quant_dot($ty, $route, t < acts.n_x4, w, acts.block_row(t))
                        .expect("quantized type");
                    // SAFETY: the caller guarantees `nt` writes `os` apart.
                    unsafe { *out.add(i * os) = v };
                }
            }
            kernel as RowKernel
        }};
    }
    macro_rules! per_route {
        ($ty:expr) => {
            match route {
                Route::VecDot => quant!($ty, Route::VecDot),
                Route::Tiled => quant!($ty, Route::Tiled),
                Route::Repacked => quant!($ty, Route::Repacked),
            }
        };
    }
    Some(match ty {
        Q4_0 => per_route!(Q4_0),
        Q4_1 => per_route!(Q4_1),
        Q5_0 => per_route!(Q5_0),
        Q5_1 => per_route!(Q5_1),
        Q8_0 => per_route!(Q8_0),
        Q2_K => per_route!(Q2_K),
        Q3_K => per_route!(Q3_K),
        Q4_K => per_route!(Q4_K),
        Q5_K => per_route!(Q5_K),
        Q6_K => per_route!(Q6_K),
        F32 => float!(vec_dot_f32),
        F16 => float!(vec_dot_f16),
        BF16 => float!(vec_dot_bf16),
        _ => return None,
    })
}
