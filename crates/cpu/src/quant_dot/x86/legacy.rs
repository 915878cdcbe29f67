//! Legacy 32-element blocks against Q8_0 / Q8_1 activations (specs/quants.md §3, §6.1).
//!
//! Unsigned codes `c` (0..15 or 0..31) go straight into the u8 side of the integer dot; the
//! offset (Q4_0: −8, Q5_0: −16) or min (Q4_1, Q5_1) is added per block as `k_w · s_a`, with
//! `s_a = d_a·Σq` from the activation planes: `k_w = −8·d_w`, `−16·d_w` or `m_w`, 8 blocks per
//! FMA. Q8_0 weights are signed and use `|w| × sign(q, w)` instead.

use core::arch::x86_64::*;

use super::{f16x8, hsum, prefetch_ahead, Engine, Rows};
use crate::quant_dot::Acts;

pub(crate) trait Legacy {
    const BYTES: usize;
    /// Codes are signed int8 (Q8_0): no offset term.
    const SIGNED: bool;
    /// The block has an f16 min `m` at byte 2 (Q4_1, Q5_1); else `k_w = OFFSET · d_w`.
    const HAS_M: bool;
    const OFFSET: f32;
    /// Codes of blocks `a` and `b` (`b` absent: zeros) in the pair-interleaved layout:
    /// (`[a 0..16 | b 0..16]`, `[a 16..32 | b 16..32]`), one code per byte.
    unsafe fn pair<E: Engine>(a: *const u8, b: Option<*const u8>) -> (__m256i, __m256i);
}

/// Two 16-byte fields at offset `off` of blocks `a` and `b` (absent: zeros) as one vector.
#[inline(always)]
unsafe fn load2(a: *const u8, b: Option<*const u8>, off: usize) -> __m256i {
    let la = _mm_loadu_si128(a.add(off) as *const __m128i);
    let lb = match b {
        Some(b) => _mm_loadu_si128(b.add(off) as *const __m128i),
        None => _mm_setzero_si128(),
    };
    _mm256_set_m128i(lb, la)
}

/// Nibble codes of a pair: low nibbles are elements 0..16, high nibbles 16..32.
#[inline(always)]
unsafe fn nibbles2(a: *const u8, b: Option<*const u8>, qs: usize) -> (__m256i, __m256i) {
    let x = load2(a, b, qs);
    let m = _mm256_set1_epi8(0x0F);
    (
        _mm256_and_si256(x, m),
        _mm256_and_si256(_mm256_srli_epi16::<4>(x), m),
    )
}

/// Adds bit 4 from the 32-bit `qh` words at offset `qh` of a pair (bit `i` = element `i`).
#[inline(always)]
unsafe fn fifth_bits2<E: Engine>(
    a: *const u8,
    b: Option<*const u8>,
    qh: usize,
    (lo, hi): (__m256i, __m256i),
) -> (__m256i, __m256i) {
    let ha = (a.add(qh) as *const u32).read_unaligned();
    let hb = b.map_or(0, |b| (b.add(qh) as *const u32).read_unaligned());
    let m = _mm256_set1_epi8(0x10);
    let bits_lo = E::bit_mask((ha & 0xFFFF) | (hb << 16));
    let bits_hi = E::bit_mask((ha >> 16) | (hb & 0xFFFF_0000));
    (
        _mm256_or_si256(lo, _mm256_and_si256(bits_lo, m)),
        _mm256_or_si256(hi, _mm256_and_si256(bits_hi, m)),
    )
}

#[allow(non_camel_case_types)]
pub(crate) struct Q4_0;
#[allow(non_camel_case_types)]
pub(crate) struct Q4_1;
#[allow(non_camel_case_types)]
pub(crate) struct Q5_0;
#[allow(non_camel_case_types)]
pub(crate) struct Q5_1;
#[allow(non_camel_case_types)]
pub(crate) struct Q8_0;

impl Legacy for Q4_0 {
    const BYTES: usize = 18;
    const SIGNED: bool = false;
    const HAS_M: bool = false;
    const OFFSET: f32 = -8.0;
    #[inline(always)]
    unsafe fn pair<E: Engine>(a: *const u8, b: Option<*const u8>) -> (__m256i, __m256i) {
        nibbles2(a, b, 2)
    }
}

impl Legacy for Q4_1 {
    const BYTES: usize = 20;
    const SIGNED: bool = false;
    const HAS_M: bool = true;
    const OFFSET: f32 = 0.0;
    #[inline(always)]
    unsafe fn pair<E: Engine>(a: *const u8, b: Option<*const u8>) -> (__m256i, __m256i) {
        nibbles2(a, b, 4)
    }
}

impl Legacy for Q5_0 {
    const BYTES: usize = 22;
    const SIGNED: bool = false;
    const HAS_M: bool = false;
    const OFFSET: f32 = -16.0;
    #[inline(always)]
    unsafe fn pair<E: Engine>(a: *const u8, b: Option<*const u8>) -> (__m256i, __m256i) {
        fifth_bits2::<E>(a, b, 2, nibbles2(a, b, 6))
    }
}

impl Legacy for Q5_1 {
    const BYTES: usize = 24;
    const SIGNED: bool = false;
    const HAS_M: bool = true;
    const OFFSET: f32 = 0.0;
    #[inline(always)]
    unsafe fn pair<E: Engine>(a: *const u8, b: Option<*const u8>) -> (__m256i, __m256i) {
        fifth_bits2::<E>(a, b, 4, nibbles2(a, b, 8))
    }
}

impl Legacy for Q8_0 {
    const BYTES: usize = 34;
    const SIGNED: bool = true;
    const HAS_M: bool = false;
    const OFFSET: f32 = 0.0;
    #[inline(always)]
    unsafe fn pair<E: Engine>(a: *const u8, b: Option<*const u8>) -> (__m256i, __m256i) {
        (load2(a, b, 2), load2(a, b, 18))
    }
}

/// Dots of one weight row with activation rows `t0..t0+T`.
///
/// Blocks go in pairs, in the activation planes' pair-interleaved order (`acts.rs`): two
/// integer dots leave block `2p`'s partial sums in lanes 0..4 and block `2p+1`'s in lanes
/// 4..8, so one convert and one FMA (with the pair's scales `d_w·d_a` spread by one permute)
/// finish both. The f16 weight scales of 8 blocks are widened with one `vcvtph2ps`. Scale and
/// code planes are zero padded to whole groups of 8 blocks and whole pairs.
#[inline(always)]
pub(crate) unsafe fn legacy_rows<E: Engine, B: Legacy, const T: usize>(
    w: &[u8],
    a: &Acts,
    t0: usize,
    out: *mut f32,
    os: usize,
) {
    let nb = a.nb;
    assert_eq!(w.len(), nb * B::BYTES);
    let rows = Rows::<T>::new(a, t0);
    let wp = w.as_ptr();
    let zero = _mm256_setzero_si256();
    let mut acc = [_mm256_setzero_ps(); T];
    let mut off = [_mm256_setzero_ps(); T];
    // Permute indices spreading pair p's two scales over lanes 0..4 and 4..8. Opaque to the
    // optimizer: with constants it splits each `vpermps` into two immediate shuffles.
    let pair_idx: [__m256i; 4] = core::hint::black_box([
        _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0),
        _mm256_set_epi32(3, 3, 3, 3, 2, 2, 2, 2),
        _mm256_set_epi32(5, 5, 5, 5, 4, 4, 4, 4),
        _mm256_set_epi32(7, 7, 7, 7, 6, 6, 6, 6),
    ]);
    for b0 in (0..nb).step_by(8) {
        let n = (nb - b0).min(8);
        let gp = wp.add(b0 * B::BYTES);
        if t0 == 0 {
            prefetch_ahead(gp, n * B::BYTES);
        }
        let dw = f16x8(gp, B::BYTES, n);
        let mut scale = [_mm256_setzero_ps(); T];
        for t in 0..T {
            scale[t] = _mm256_mul_ps(dw, _mm256_loadu_ps(rows.d[t].add(b0)));
        }
        if !B::SIGNED {
            let k = if B::HAS_M {
                f16x8(gp.add(2), B::BYTES, n)
            } else {
                _mm256_mul_ps(dw, _mm256_set1_ps(B::OFFSET))
            };
            for t in 0..T {
                off[t] = _mm256_fmadd_ps(k, _mm256_loadu_ps(rows.s[t].add(b0)), off[t]);
            }
        }
        // One pair: blocks 2p and 2p+1 (if `has_b`) of this group. A macro rather than a
        // closure: closures carry no target features, so the intrinsics would not inline.
        macro_rules! pair {
            ($p:expr, $has_b:expr) => {{
                let (p, has_b): (usize, bool) = ($p, $has_b);
                let pa = gp.add(2 * p * B::BYTES);
                let (c1, c2) = B::pair::<E>(pa, has_b.then(|| pa.add(B::BYTES)));
                let (u1, u2) = if B::SIGNED {
                    (_mm256_sign_epi8(c1, c1), _mm256_sign_epi8(c2, c2))
                } else {
                    (c1, c2)
                };
                let idx = pair_idx[p];
                for t in 0..T {
                    let q = rows.qs[t].add(32 * (b0 + 2 * p));
                    let mut q1 = _mm256_loadu_si256(q as *const __m256i);
                    let mut q2 = _mm256_loadu_si256(q.add(32) as *const __m256i);
                    if B::SIGNED {
                        q1 = _mm256_sign_epi8(q1, c1);
                        q2 = _mm256_sign_epi8(q2, c2);
                    }
                    let dot = E::dot_u8i8(E::dot_u8i8(zero, u1, q1), u2, q2);
                    let sc = _mm256_permutevar8x32_ps(scale[t], idx);
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sc, acc[t]);
                }
            }};
        }
        if n == 8 {
            pair!(0, true);
            pair!(1, true);
            pair!(2, true);
            pair!(3, true);
        } else {
            for p in 0..n.div_ceil(2) {
                pair!(p, 2 * p + 1 < n);
            }
        }
    }
    for t in 0..T {
        *out.add(t * os) = hsum(_mm256_add_ps(acc[t], off[t]));
    }
}
