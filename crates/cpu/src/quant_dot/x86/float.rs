//! F32 / F16 / BF16 weights against f32 activations: weights widened exactly to f32 (F16C for
//! f16, a 16-bit shift for bf16), products and sums in f32 with FMA.

use core::arch::x86_64::*;

use super::{hsum, prefetch_ahead, Engine, Rows};
use crate::quant_dot::Acts;

pub(crate) trait FloatW {
    const BYTES: usize;
    /// 8 weights at `p` as f32.
    unsafe fn load8(p: *const u8) -> __m256;
    /// One weight at `p` as f32.
    unsafe fn load1(p: *const u8) -> f32;
}

pub(crate) struct F32;
pub(crate) struct F16;
pub(crate) struct Bf16;

impl FloatW for F32 {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p as *const f32)
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        (p as *const f32).read_unaligned()
    }
}

impl FloatW for F16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        super::f16_at(p)
    }
}

impl FloatW for Bf16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        f32::from_bits(((p as *const u16).read_unaligned() as u32) << 16)
    }
}

/// Dots of one weight row with activation rows `t0..t0+T`.
#[inline(always)]
pub(crate) unsafe fn float_rows<E: Engine, W: FloatW, const T: usize>(
    w: &[u8],
    a: &Acts,
    t0: usize,
    out: *mut f32,
    os: usize,
) {
    let n = a.cols;
    assert_eq!(w.len(), n * W::BYTES);
    let rows = Rows::<T>::new(a, t0);
    let wp = w.as_ptr();
    let mut acc0 = [_mm256_setzero_ps(); T];
    let mut acc1 = [_mm256_setzero_ps(); T];
    let mut i = 0;
    while i + 16 <= n {
        if t0 == 0 {
            prefetch_ahead(wp.add(i * W::BYTES), 16 * W::BYTES);
        }
        let w0 = W::load8(wp.add(i * W::BYTES));
        let w1 = W::load8(wp.add((i + 8) * W::BYTES));
        for t in 0..T {
            acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(rows.x[t].add(i)), acc0[t]);
            acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(rows.x[t].add(i + 8)), acc1[t]);
        }
        i += 16;
    }
    if i + 8 <= n {
        let w0 = W::load8(wp.add(i * W::BYTES));
        for t in 0..T {
            acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(rows.x[t].add(i)), acc0[t]);
        }
        i += 8;
    }
    for t in 0..T {
        let mut sum = hsum(_mm256_add_ps(acc0[t], acc1[t]));
        for j in i..n {
            sum += W::load1(wp.add(j * W::BYTES)) * *rows.x[t].add(j);
        }
        *out.add(t * os) = sum;
    }
}
