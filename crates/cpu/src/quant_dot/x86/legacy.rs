//! Legacy 32-element blocks against Q8_0 / Q8_1 activations, in llama.cpp's summation order
//! (`scalar::vec_dot_q0`, `vec_dot_q1`, `repacked_q4_0` define it).
//!
//! A block's 32 weight values go into one 256-bit integer dot in element order, so i32 lane `k`
//! holds elements `4k..4k+3`, exactly llama.cpp's lanes. The signed values (Q4_0 `c − 8`, Q5_0
//! `c − 16`, Q8_0) meet biased activation codes as `dot(−128·Σw, q + 128, w)`, the correction
//! computed once per block; Q8_0 on AVX2 uses `|w| × sign(q, w)` instead (`quant_dot::codes_for`).
//! The unsigned Q4_1 / Q5_1 codes go in directly. Per block and token: `acc = fma(d_w·d_a,
//! lanes, acc)` (the 8 blocks' `d_w·d_a` of a group come from one multiply); Q4_1 / Q5_1 also
//! `summs = fma(m_w, s_a, summs)`, 4 tokens per vector. Repacked Q4_0 instead sums each block's
//! lanes to one integer and accumulates `fma(I, d_w·d_a, acc)`, 4 tokens per vector.
//!
//! Tiles are up to 8 tokens: the per-token work is small (a load, a dot, a convert, an FMA), so
//! the block decode is spread over more tokens, and 8 independent FMA chains hide the latency
//! of the one accumulator per token that llama.cpp's order imposes.

use core::arch::x86_64::*;

use super::{f16x8, hsum, prefetch_ahead, reduce4, Engine, Rows};
use crate::quant_dot::{Acts, Codes};

pub(crate) trait Legacy {
    const BYTES: usize;
    /// The weight values are signed (Q4_0, Q5_0, Q8_0); else unsigned codes plus an f16 min at
    /// byte 2.
    const SIGNED: bool;
    /// The block's 32 values in element order, one per byte (low 128 bits: elements 0..16).
    unsafe fn values<E: Engine>(p: *const u8) -> __m256i;
    /// Signed types: the values plus the `Codes::LaneOffset` constant, as unsigned bytes.
    unsafe fn offset_codes<E: Engine>(p: *const u8) -> __m256i;
}

/// Nibble codes of a block at `qs`: low nibbles are elements 0..16, high nibbles 16..32.
#[inline(always)]
unsafe fn nibbles(p: *const u8, qs: usize) -> __m256i {
    let x = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(qs) as *const __m128i));
    let v = _mm256_srlv_epi64(x, _mm256_setr_epi64x(0, 0, 4, 4));
    _mm256_and_si256(v, _mm256_set1_epi8(0x0F))
}

/// The 32-bit `qh` word at offset `qh` (bit `i` = bit 4 of element `i`).
#[inline(always)]
unsafe fn qh(p: *const u8, qh: usize) -> u32 {
    (p.add(qh) as *const u32).read_unaligned()
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
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn values<E: Engine>(p: *const u8) -> __m256i {
        _mm256_sub_epi8(nibbles(p, 2), _mm256_set1_epi8(8))
    }
    #[inline(always)]
    unsafe fn offset_codes<E: Engine>(p: *const u8) -> __m256i {
        nibbles(p, 2)
    }
}

impl Legacy for Q4_1 {
    const BYTES: usize = 20;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn values<E: Engine>(p: *const u8) -> __m256i {
        nibbles(p, 4)
    }
    #[inline(always)]
    unsafe fn offset_codes<E: Engine>(p: *const u8) -> __m256i {
        Self::values::<E>(p)
    }
}

impl Legacy for Q5_0 {
    const BYTES: usize = 22;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn values<E: Engine>(p: *const u8) -> __m256i {
        // c − 16: the low nibble where bit 4 is set, else the nibble with the high bits set.
        let lo = nibbles(p, 6);
        E::bit_blend(qh(p, 2), _mm256_or_si256(lo, _mm256_set1_epi8(-16)), lo)
    }
    #[inline(always)]
    unsafe fn offset_codes<E: Engine>(p: *const u8) -> __m256i {
        let lo = nibbles(p, 6);
        E::bit_blend(qh(p, 2), lo, _mm256_or_si256(lo, _mm256_set1_epi8(0x10)))
    }
}

impl Legacy for Q5_1 {
    const BYTES: usize = 24;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn values<E: Engine>(p: *const u8) -> __m256i {
        let lo = nibbles(p, 8);
        E::bit_blend(qh(p, 4), lo, _mm256_or_si256(lo, _mm256_set1_epi8(0x10)))
    }
    #[inline(always)]
    unsafe fn offset_codes<E: Engine>(p: *const u8) -> __m256i {
        Self::values::<E>(p)
    }
}

impl Legacy for Q8_0 {
    const BYTES: usize = 34;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn values<E: Engine>(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p.add(2) as *const __m256i)
    }
    #[inline(always)]
    unsafe fn offset_codes<E: Engine>(p: *const u8) -> __m256i {
        _mm256_xor_si256(Self::values::<E>(p), _mm256_set1_epi8(-128))
    }
}

/// Dots of one weight row with activation rows `t0..t0+T` (`T` ≤ 8); `REPACKED`: the
/// repacked-Q4_0 order (per block one integer), else the vec_dot / tinyBLAS lanes.
#[inline(always)]
pub(crate) unsafe fn legacy_rows<E: Engine, B: Legacy, const REPACKED: bool, const T: usize>(
    w: &[u8],
    a: &Acts,
    t0: usize,
    out: *mut f32,
    os: usize,
) {
    if let Codes::LaneOffset(_) = a.codes {
        legacy_core::<E, B, REPACKED, true, T>(w, a, t0, out, os)
    } else {
        legacy_core::<E, B, REPACKED, false, T>(w, a, t0, out, os)
    }
}

/// [`legacy_rows`] with the activation codes in `Codes::LaneOffset` form (`OFFSET`) or not.
#[inline(always)]
unsafe fn legacy_core<
    E: Engine,
    B: Legacy,
    const REPACKED: bool,
    const OFFSET: bool,
    const T: usize,
>(
    w: &[u8],
    a: &Acts,
    t0: usize,
    out: *mut f32,
    os: usize,
) {
    let nb = a.nb;
    assert_eq!(w.len(), nb * B::BYTES);
    assert!(t0.is_multiple_of(4), "the d4 / s4 planes are per 4 tokens");
    let rows = Rows::<T>::new(a, t0);
    let wp = w.as_ptr();
    let zero = _mm256_setzero_si256();
    // The activation codes' form this kernel reads (`quant_dot::codes_for`).
    let offset = OFFSET && B::SIGNED;
    let biased = !OFFSET && B::SIGNED && (E::VNNI || B::BYTES != 34);
    if offset {
        assert!(matches!(a.codes, Codes::LaneOffset(_)) && (E::VNNI || B::BYTES != 34));
    } else {
        assert_eq!(a.codes, if biased { Codes::Biased } else { Codes::Plain });
    }
    let mut acc = [_mm256_setzero_ps(); T];
    // Lane t = token 4g + t: Q4_1 / Q5_1 `summs`; the repacked Q4_0 accumulator.
    let mut summs4 = [_mm_setzero_ps(); 2];
    let mut acc4 = [_mm_setzero_ps(); 2];
    let groups = T.div_ceil(4);
    for b0 in (0..nb).step_by(8) {
        let n = (nb - b0).min(8);
        let gp = wp.add(b0 * B::BYTES);
        if t0 == 0 {
            prefetch_ahead(gp, n * B::BYTES);
        }
        let dw = f16x8(gp, B::BYTES, n);
        let mut dws = [0f32; 8];
        _mm256_storeu_ps(dws.as_mut_ptr(), dw);
        // d_w·d_a of the group's 8 blocks, per token.
        let mut scale = [[0f32; 8]; T];
        if !REPACKED {
            for t in 0..T {
                let v = _mm256_mul_ps(dw, _mm256_loadu_ps(rows.d[t].add(b0)));
                _mm256_storeu_ps(scale[t].as_mut_ptr(), v);
            }
        }
        // Read back through an opaque reference: each use becomes a broadcast load folded into
        // the FMA, instead of lane shuffles of a register copy.
        let scale = core::hint::black_box(&scale);
        let mut mins = [0f32; 8];
        if !B::SIGNED {
            _mm256_storeu_ps(mins.as_mut_ptr(), f16x8(gp.add(2), B::BYTES, n));
        }
        for j in 0..n {
            let b = b0 + j;
            let bp = gp.add(j * B::BYTES);
            let v = if offset {
                B::offset_codes::<E>(bp)
            } else {
                B::values::<E>(bp)
            };
            // Biased codes: the lanes start from −128·Σ w. Sign trick: |w|.
            let (u, init) = if offset {
                (v, zero)
            } else if biased {
                let w128 = E::dot_u8i8(zero, _mm256_set1_epi8(-128), v);
                (v, _mm256_sub_epi32(zero, w128))
            } else if B::SIGNED {
                (_mm256_sign_epi8(v, v), zero)
            } else {
                (v, zero)
            };
            let mut dots = [zero; T];
            for t in 0..T {
                let q = _mm256_loadu_si256(rows.qs[t].add(32 * b) as *const __m256i);
                dots[t] = if offset {
                    let off = _mm256_loadu_si256(rows.qoff[t].add(8 * b) as *const __m256i);
                    E::dot_u8i8(off, v, q)
                } else if biased {
                    E::dot_u8i8(init, q, v)
                } else if B::SIGNED {
                    E::dot_u8i8(zero, u, _mm256_sign_epi8(q, v))
                } else {
                    E::dot_u8i8(zero, v, q)
                };
                if !REPACKED {
                    let sc = _mm256_set1_ps(scale[t][j]);
                    acc[t] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(dots[t]), acc[t]);
                }
            }
            for g in 0..groups {
                if !B::SIGNED {
                    let s4 = _mm_loadu_ps(rows.s4.add(4 * (g * nb + b)));
                    summs4[g] = _mm_fmadd_ps(_mm_set1_ps(mins[j]), s4, summs4[g]);
                }
                if REPACKED {
                    let i4 = reduce4(core::array::from_fn(|i| {
                        if 4 * g + i < T {
                            dots[4 * g + i]
                        } else {
                            zero
                        }
                    }));
                    let d4 = _mm_loadu_ps(rows.d4.add(4 * (g * nb + b)));
                    let s4 = _mm_mul_ps(_mm_set1_ps(dws[j]), d4);
                    acc4[g] = _mm_fmadd_ps(_mm_cvtepi32_ps(i4), s4, acc4[g]);
                }
            }
        }
    }
    let mut r = [0f32; 8];
    _mm_storeu_ps(r.as_mut_ptr(), if REPACKED { acc4[0] } else { summs4[0] });
    _mm_storeu_ps(
        r.as_mut_ptr().add(4),
        if REPACKED { acc4[1] } else { summs4[1] },
    );
    for t in 0..T {
        *out.add(t * os) = if REPACKED {
            r[t]
        } else if B::SIGNED {
            hsum(acc[t])
        } else {
            hsum(acc[t]) + r[t]
        };
    }
}
