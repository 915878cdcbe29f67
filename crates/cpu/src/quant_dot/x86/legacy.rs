//! Legacy 32-element blocks against Q8_0 / Q8_1 activations (specs/quants.md §3, §6.1).
//!
//! Unsigned codes `c` (0..15 or 0..31) go straight into the u8 side of the integer dot; the
//! offset (Q4_0: −8, Q5_0: −16) or min (Q4_1, Q5_1) is added per block as `k_w · s_a`, with
//! `s_a = d_a·Σq` from the activation planes: `k_w = −8·d_w`, `−16·d_w` or `m_w`. Those
//! products are collected for up to 64 blocks and then summed 8 blocks per FMA. Q8_0 weights
//! are signed and use `|w| × sign(q, w)` instead.

use core::arch::x86_64::*;

use super::{f16_at, hsum, Engine, Rows};
use crate::quant_dot::Acts;

/// One decoded weight block.
pub(crate) struct Block {
    /// 32 codes, element `i` in byte `i` (unsigned, or signed for `SIGNED` types).
    pub codes: __m256i,
    pub d: f32,
    /// Per-block coefficient of `s_a` (unused for `SIGNED` types).
    pub k: f32,
}

pub(crate) trait Legacy {
    const BYTES: usize;
    /// Codes are signed int8 (Q8_0): no offset term.
    const SIGNED: bool;
    unsafe fn decode<E: Engine>(p: *const u8) -> Block;
}

/// 16 bytes of nibbles → element `i` in byte `i` (low nibbles 0..15, high nibbles 16..31).
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let x = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(x), x);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Bit 4 of each code from the 32-bit `qh` word at `p`.
#[inline(always)]
unsafe fn fifth_bits<E: Engine>(p: *const u8) -> __m256i {
    let qh = (p as *const u32).read_unaligned();
    _mm256_and_si256(E::bit_mask(qh), _mm256_set1_epi8(0x10))
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
    #[inline(always)]
    unsafe fn decode<E: Engine>(p: *const u8) -> Block {
        let d = f16_at(p);
        Block {
            codes: nibbles(p.add(2)),
            d,
            k: -8.0 * d,
        }
    }
}

impl Legacy for Q4_1 {
    const BYTES: usize = 20;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn decode<E: Engine>(p: *const u8) -> Block {
        Block {
            codes: nibbles(p.add(4)),
            d: f16_at(p),
            k: f16_at(p.add(2)),
        }
    }
}

impl Legacy for Q5_0 {
    const BYTES: usize = 22;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn decode<E: Engine>(p: *const u8) -> Block {
        let d = f16_at(p);
        let codes = _mm256_or_si256(nibbles(p.add(6)), fifth_bits::<E>(p.add(2)));
        Block {
            codes,
            d,
            k: -16.0 * d,
        }
    }
}

impl Legacy for Q5_1 {
    const BYTES: usize = 24;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn decode<E: Engine>(p: *const u8) -> Block {
        let codes = _mm256_or_si256(nibbles(p.add(8)), fifth_bits::<E>(p.add(4)));
        Block {
            codes,
            d: f16_at(p),
            k: f16_at(p.add(2)),
        }
    }
}

impl Legacy for Q8_0 {
    const BYTES: usize = 34;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn decode<E: Engine>(p: *const u8) -> Block {
        let codes = _mm256_loadu_si256(p.add(2) as *const __m256i);
        Block {
            codes,
            d: f16_at(p),
            k: 0.0,
        }
    }
}

/// Blocks whose `k_w` are buffered before the offset pass.
const CHUNK: usize = 64;

/// Dots of one weight row with activation rows `t0..t0+T`.
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
    let mut acc = [_mm256_setzero_ps(); T];
    let mut off = [_mm256_setzero_ps(); T];
    let mut kbuf = [0f32; CHUNK];
    let mut b0 = 0;
    while b0 < nb {
        let n = (nb - b0).min(CHUNK);
        for (i, k) in kbuf[..n].iter_mut().enumerate() {
            let b = b0 + i;
            let blk = B::decode::<E>(wp.add(b * B::BYTES));
            *k = blk.k;
            let dw = _mm256_set1_ps(blk.d);
            let u = if B::SIGNED {
                _mm256_sign_epi8(blk.codes, blk.codes)
            } else {
                blk.codes
            };
            for t in 0..T {
                let q = _mm256_loadu_si256(rows.qs[t].add(32 * b) as *const __m256i);
                let s = if B::SIGNED {
                    _mm256_sign_epi8(q, blk.codes)
                } else {
                    q
                };
                let dot = E::dot_u8i8(_mm256_setzero_si256(), u, s);
                let scale = _mm256_mul_ps(dw, _mm256_broadcast_ss(&*rows.d[t].add(b)));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[t]);
            }
        }
        if !B::SIGNED {
            // `s` rows are zero padded to a multiple of 8 blocks; pad `k` the same way.
            let n8 = n.div_ceil(8) * 8;
            kbuf[n..n8].fill(0.0);
            for j in (0..n8).step_by(8) {
                let kv = _mm256_loadu_ps(kbuf.as_ptr().add(j));
                for t in 0..T {
                    let sv = _mm256_loadu_ps(rows.s[t].add(b0 + j));
                    off[t] = _mm256_fmadd_ps(kv, sv, off[t]);
                }
            }
        }
        b0 += n;
    }
    for t in 0..T {
        *out.add(t * os) = hsum(_mm256_add_ps(acc[t], off[t]));
    }
}
