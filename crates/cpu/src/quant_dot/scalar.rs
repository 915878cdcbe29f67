//! Scalar dot products: the definition of the math (specs/quants.md §6).
//!
//! Each `vec_dot_<type>(w, a)` takes one weight row `w` (whole blocks of the type) and one
//! activation row `a` in the paired format's standard blocks (Q8_0 / Q8_1 / Q8_K, or f32 for
//! the float types) covering the same elements. Integer sums per block are exact (i32); block
//! results are scaled and summed in f32, in block order.

use kestrel_gguf::quant::{
    bf16_to_f32, f16_to_f32, k4_scale_min, legacy_code5, legacy_nibble, q3k_scale,
};
use kestrel_gguf::GgmlType;

use super::{Acts, RowKernel};

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

/// Q4_0 × Q8_0: `d_w·d_a · Σ (c − 8)·q`.
pub fn vec_dot_q4_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w, 18, a, 34) {
        let isum: i32 = (0..32)
            .map(|i| (legacy_nibble(&wb[2..18], i) as i32 - 8) * q8(ab, 2, i))
            .sum();
        sum += (f16(wb, 0) * f16(ab, 0)) * isum as f32;
    }
    sum
}

/// Q4_1 × Q8_1: `(d_w·d_a) · Σ c·q + m_w·s_a`.
pub fn vec_dot_q4_1(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w, 20, a, 36) {
        let isum: i32 = (0..32)
            .map(|i| legacy_nibble(&wb[4..20], i) as i32 * q8(ab, 4, i))
            .sum();
        sum += (f16(wb, 0) * f16(ab, 0)) * isum as f32 + f16(wb, 2) * f16(ab, 2);
    }
    sum
}

/// Q5_0 × Q8_0: `d_w·d_a · Σ (c − 16)·q`.
pub fn vec_dot_q5_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w, 22, a, 34) {
        let qh = u32_at(wb, 2);
        let isum: i32 = (0..32)
            .map(|i| (legacy_code5(qh, &wb[6..22], i) as i32 - 16) * q8(ab, 2, i))
            .sum();
        sum += (f16(wb, 0) * f16(ab, 0)) * isum as f32;
    }
    sum
}

/// Q5_1 × Q8_1: `(d_w·d_a) · Σ c·q + m_w·s_a`.
pub fn vec_dot_q5_1(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w, 24, a, 36) {
        let qh = u32_at(wb, 4);
        let isum: i32 = (0..32)
            .map(|i| legacy_code5(qh, &wb[8..24], i) as i32 * q8(ab, 4, i))
            .sum();
        sum += (f16(wb, 0) * f16(ab, 0)) * isum as f32 + f16(wb, 2) * f16(ab, 2);
    }
    sum
}

/// Q8_0 × Q8_0: `(d_w·d_a) · Σ q_w·q`.
pub fn vec_dot_q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w, 34, a, 34) {
        let isum: i32 = (0..32).map(|i| q8(wb, 2, i) * q8(ab, 2, i)).sum();
        sum += (f16(wb, 0) * f16(ab, 0)) * isum as f32;
    }
    sum
}

/// Q8_K block fields: `d` and `bsums[k]`.
#[inline]
fn q8k_d(a: &[u8]) -> f32 {
    f32::from_le_bytes([a[0], a[1], a[2], a[3]])
}

#[inline]
fn q8k_bsum(a: &[u8], k: usize) -> i32 {
    i16::from_le_bytes([a[260 + 2 * k], a[261 + 2 * k]]) as i32
}

/// Q2_K × Q8_K: `d_a · [d·Σ_j S_j·Σ_{i∈j} c·q − dmin·Σ_j M_j·B_j]`.
pub fn vec_dot_q2_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w, 84, a, 292) {
        let (scales, qs) = (&wb[0..16], &wb[16..80]);
        let (mut isum, mut msum) = (0i32, 0i32);
        for (j, &sm) in scales.iter().enumerate() {
            let sub: i32 = (16 * j..16 * j + 16)
                .map(|i| {
                    let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
                    ((qs[32 * h + l] >> (2 * s)) & 3) as i32 * q8(ab, 4, i)
                })
                .sum();
            isum += (sm & 0xF) as i32 * sub;
            msum += (sm >> 4) as i32 * q8k_bsum(ab, j);
        }
        sum += q8k_d(ab) * (f16(wb, 80) * isum as f32 - f16(wb, 82) * msum as f32);
    }
    sum
}

/// Q3_K × Q8_K: `d·d_a · Σ_j S_j·Σ_{i∈j} c·q` with signed `c = lo2 − 4·(1 − hb)`.
pub fn vec_dot_q3_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w, 110, a, 292) {
        let (hmask, qs, scales) = (&wb[0..32], &wb[32..96], &wb[96..108]);
        let mut isum = 0i32;
        for j in 0..16 {
            let sub: i32 = (16 * j..16 * j + 16)
                .map(|i| {
                    let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
                    let lo2 = ((qs[32 * h + l] >> (2 * s)) & 3) as i32;
                    let hb = ((hmask[l] >> (i / 32)) & 1) as i32;
                    (lo2 - 4 * (1 - hb)) * q8(ab, 4, i)
                })
                .sum();
            isum += q3k_scale(scales, j) as i32 * sub;
        }
        sum += (f16(wb, 108) * q8k_d(ab)) * isum as f32;
    }
    sum
}

/// Q4_K / Q5_K × Q8_K: `d_a · [d·Σ_j S_j·Σ_{i∈j} c·q − dmin·Σ_j M_j·(B_2j + B_2j+1)]`;
/// `code(i)` gives the unsigned code of element `i`.
fn dot_k4(wb: &[u8], ab: &[u8], code: impl Fn(usize) -> u8) -> f32 {
    let scales = &wb[4..16];
    let (mut isum, mut msum) = (0i32, 0i32);
    for j in 0..8 {
        let (sc, m) = k4_scale_min(scales, j);
        let sub: i32 = (32 * j..32 * j + 32)
            .map(|i| code(i) as i32 * q8(ab, 4, i))
            .sum();
        isum += sc as i32 * sub;
        msum += m as i32 * (q8k_bsum(ab, 2 * j) + q8k_bsum(ab, 2 * j + 1));
    }
    q8k_d(ab) * (f16(wb, 0) * isum as f32 - f16(wb, 2) * msum as f32)
}

/// Q4_K × Q8_K (see `dot_k4`).
pub fn vec_dot_q4_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w, 144, a, 292) {
        let qs = &wb[16..144];
        sum += dot_k4(wb, ab, |i| {
            (qs[32 * (i / 64) + i % 32] >> (4 * ((i / 32) % 2))) & 0xF
        });
    }
    sum
}

/// Q5_K × Q8_K (see `dot_k4`), 5-bit codes.
pub fn vec_dot_q5_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w, 176, a, 292) {
        let (qh, qs) = (&wb[16..48], &wb[48..176]);
        sum += dot_k4(wb, ab, |i| {
            let lo = (qs[32 * (i / 64) + i % 32] >> (4 * ((i / 32) % 2))) & 0xF;
            lo | (((qh[i % 32] >> (i / 32)) & 1) << 4)
        });
    }
    sum
}

/// Q6_K × Q8_K: `d·d_a · Σ_j S_j·Σ_{i∈j} (v − 32)·q`.
pub fn vec_dot_q6_k(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0.0f32;
    for (wb, ab) in blocks(w, 210, a, 292) {
        let (ql, qh, scales) = (&wb[0..128], &wb[128..192], &wb[192..208]);
        let mut isum = 0i32;
        for (j, &sc) in scales.iter().enumerate() {
            let sub: i32 = (16 * j..16 * j + 16)
                .map(|i| {
                    let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
                    let lo4 = (ql[64 * h + 32 * (s % 2) + l] >> (4 * (s / 2))) & 0xF;
                    let hi2 = (qh[32 * h + l] >> (2 * s)) & 3;
                    ((lo4 | (hi2 << 4)) as i32 - 32) * q8(ab, 4, i)
                })
                .sum();
            isum += sc as i8 as i32 * sub;
        }
        sum += (f16(wb, 208) * q8k_d(ab)) * isum as f32;
    }
    sum
}

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

/// `vec_dot_<quantized type>(weight row, activation blocks)`.
pub type QuantDot = fn(&[u8], &[u8]) -> f32;
/// `vec_dot_<float type>(weight row, f32 activations)`.
pub type FloatDot = fn(&[u8], &[f32]) -> f32;

/// The scalar dot for a quantized weight type against its standard activation blocks.
pub fn quant_dot_fn(ty: GgmlType) -> Option<QuantDot> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 => vec_dot_q4_0,
        Q4_1 => vec_dot_q4_1,
        Q5_0 => vec_dot_q5_0,
        Q5_1 => vec_dot_q5_1,
        Q8_0 => vec_dot_q8_0,
        Q2_K => vec_dot_q2_k,
        Q3_K => vec_dot_q3_k,
        Q4_K => vec_dot_q4_k,
        Q5_K => vec_dot_q5_k,
        Q6_K => vec_dot_q6_k,
        _ => return None,
    })
}

/// The scalar dot for a float weight type against f32 activations.
pub fn float_dot_fn(ty: GgmlType) -> Option<FloatDot> {
    Some(match ty {
        GgmlType::F32 => vec_dot_f32,
        GgmlType::F16 => vec_dot_f16,
        GgmlType::BF16 => vec_dot_bf16,
        _ => return None,
    })
}

/// Row kernel for the scalar path (one `vec_dot_*` call per token).
pub(crate) fn row_kernel(ty: GgmlType) -> Option<RowKernel> {
    use GgmlType::*;
    macro_rules! k {
        ($f:ident, $row:ident) => {{
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
                    unsafe { *out.add(i * os) = $f(w, acts.$row(t0 + i)) };
                }
            }
            kernel as RowKernel
        }};
    }
    Some(match ty {
        Q4_0 => k!(vec_dot_q4_0, block_row),
        Q4_1 => k!(vec_dot_q4_1, block_row),
        Q5_0 => k!(vec_dot_q5_0, block_row),
        Q5_1 => k!(vec_dot_q5_1, block_row),
        Q8_0 => k!(vec_dot_q8_0, block_row),
        Q2_K => k!(vec_dot_q2_k, block_row),
        Q3_K => k!(vec_dot_q3_k, block_row),
        Q4_K => k!(vec_dot_q4_k, block_row),
        Q5_K => k!(vec_dot_q5_k, block_row),
        Q6_K => k!(vec_dot_q6_k, block_row),
        F32 => k!(vec_dot_f32, x_row),
        F16 => k!(vec_dot_f16, x_row),
        BF16 => k!(vec_dot_bf16, x_row),
        _ => return None,
    })
}
