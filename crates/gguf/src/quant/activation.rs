//! Activation quantizers (specs/quants.md §5): f32 → Q8_0, Q8_1 (CPU rule for `s`), Q8_K.
//!
//! Codes are clamped to [-127, 127] before the cast. For finite inputs of normal magnitude the
//! clamp never changes a value of the reference rule; it only keeps `-128` (and Rust's saturating
//! cast of ±inf) out when a block holds infinities or values so tiny that `1/d` overflows.

use super::float::f32_to_f16;
use crate::types::QK_K;

const QK8: usize = 32;

/// `max |x_i|`, NaNs skipped (ggml's `MAX` would keep a NaN only when it is the last element;
/// a block holding NaN has no meaningful codes either way).
fn amax(x: &[f32]) -> f32 {
    x.iter()
        .fold(0.0f32, |m, &v| if v.abs() > m { v.abs() } else { m })
}

/// `roundf`: nearest integer, ties away from zero; clamped into the int8 code range.
#[inline]
fn code_roundf(v: f32) -> i8 {
    v.round().clamp(-127.0, 127.0) as i8
}

/// Shared Q8_0 / Q8_1 step: unrounded f32 `d` and the codes.
fn q8_block(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    let d = amax(x) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        let c = code_roundf(v * id);
        *q = c as u8;
        sum += c as i32;
    }
    (d, sum)
}

fn check(name: &str, src: &[f32], dst: &[u8], blk: usize, bytes: usize) {
    assert!(
        src.len() % blk == 0 && dst.len() == src.len() / blk * bytes,
        "quantize {name}: {} input values need to be a multiple of {blk} and the output {} bytes, got {}",
        src.len(),
        src.len() / blk * bytes,
        dst.len()
    );
}

/// Reference Q8_0 quantizer (§5.1): `d = amax/127`, `q = roundf(x · (1/d))`, `d` stored as f16.
///
/// # Panics
/// If `src.len()` is not a multiple of 32 or `dst.len()` is not 34 bytes per block.
pub fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    check("Q8_0", src, dst, QK8, 34);
    for (x, b) in src.chunks_exact(QK8).zip(dst.chunks_exact_mut(34)) {
        let (d, _) = q8_block(x, &mut b[2..34]);
        b[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    }
}

/// Reference Q8_1 quantizer (§5.2), CPU rule: `d`, `q` as Q8_0 and `s = fp16(d_f32 · Σq)`.
///
/// # Panics
/// If `src.len()` is not a multiple of 32 or `dst.len()` is not 36 bytes per block.
pub fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    check("Q8_1", src, dst, QK8, 36);
    for (x, b) in src.chunks_exact(QK8).zip(dst.chunks_exact_mut(36)) {
        let (d, sum) = q8_block(x, &mut b[4..36]);
        b[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        b[2..4].copy_from_slice(&f32_to_f16(sum as f32 * d).to_le_bytes());
    }
}

/// Reference Q8_K quantizer (§5.3): the largest-magnitude element (first on ties) maps to -127,
/// codes round ties-to-even, `d = 1/iscale` kept in f32 (negative when that element is positive),
/// `bsums` = per-16 code sums. An all-zero block gives `d = 0`, codes and bsums 0.
///
/// # Panics
/// If `src.len()` is not a multiple of 256 or `dst.len()` is not 292 bytes per block.
pub fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    check("Q8_K", src, dst, QK_K, 292);
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(292)) {
        let (mut amax, mut vmax) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                vmax = v;
            }
        }
        encode_q8_k_block(x, vmax, b);
    }
}

/// One 256-value Q8_K block (292 bytes) whose scale is anchored on `vmax` (mapped to -127):
/// codes round ties-to-even, `d = 1/iscale` in f32, per-16 `bsums`. `vmax == 0` (an all-zero
/// block) gives an all-zero block. The reference picks `vmax` as the first largest-magnitude
/// element; other quantizers (llama.cpp's repacked paths) anchor on another but encode the same way.
///
/// # Panics
/// If `x` is not 256 values or `b` not 292 bytes.
pub fn encode_q8_k_block(x: &[f32], vmax: f32, b: &mut [u8]) {
    assert!(
        x.len() == QK_K && b.len() == 292,
        "Q8_K block: {} values, {} bytes",
        x.len(),
        b.len()
    );
    if vmax == 0.0 {
        b.fill(0);
        return;
    }
    let iscale = -127.0 / vmax;
    let (qs, bsums) = b[4..].split_at_mut(256);
    for (q, &v) in qs.iter_mut().zip(x) {
        // nearest_int: ties to even; min(127) per the reference, and the lower clamp only
        // matters when iscale overflowed to infinity.
        *q = (iscale * v).round_ties_even().clamp(-127.0, 127.0) as i8 as u8;
    }
    for (k, out) in bsums.chunks_exact_mut(2).enumerate() {
        let s: i16 = qs[16 * k..16 * k + 16]
            .iter()
            .map(|&q| q as i8 as i16)
            .sum();
        out.copy_from_slice(&s.to_le_bytes());
    }
    b[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}
