//! K-quant super-blocks against Q8_K activations (specs/quants.md §4, §6.2).
//!
//! A super-block is decoded into 8 vectors of 32 unsigned codes plus, per vector, an i16 scale
//! vector (sub-block scale for each `vpmaddubsw` pair lane). Per token: `Σ_c madd16(
//! maddubs(codes_c, q_c), scales_c)` in i32 lanes. The constant offsets of Q3_K (−4) and Q6_K
//! (−32) are folded in the integer domain through the bsums (`mins = −offset·S_j`); the mins of
//! Q2_K, Q4_K and Q5_K are a separate `dmin·Σ M_j·B_j` term in f32.

use core::arch::x86_64::*;

use kestrel_gguf::quant::q3k_scale;

use super::{f16_at, hsum, prefetch_ahead, Engine, Rows};
use crate::quant_dot::Acts;

/// One decoded super-block.
pub(crate) struct KBlock {
    /// Codes of elements `32c..32c+31`, unsigned (≤ 63).
    pub codes: [__m256i; 8],
    /// i16 lanes: scale of the sub-block each `maddubs` lane of chunk `c` falls in.
    pub scales: [__m256i; 8],
    /// i16 × 16, multiplied with the 16 bsums: the min `M` per 16 elements (`HAS_MIN`) or the
    /// offset term `−offset·S_j`.
    pub mins: __m256i,
    pub d: f32,
    pub dmin: f32,
}

pub(crate) trait KQuant {
    const BYTES: usize;
    /// The `mins` product is scaled by `dmin` and subtracted in f32 (else added to the ints).
    const HAS_MIN: bool;
    unsafe fn decode<E: Engine>(p: *const u8, k: &mut KBlock);
}

pub(crate) struct Q2K;
pub(crate) struct Q3K;
pub(crate) struct Q4K;
pub(crate) struct Q5K;
pub(crate) struct Q6K;

/// `vpshufb` controls (per 128-bit half) picking i16 lanes: `PICK[c]` spreads lane `c` (both
/// halves); `PAIR[c]` spreads lane `2c` over the low half and lane `2c+1` over the high half.
static PICK: [[u8; 32]; 8] = {
    let mut t = [[0u8; 32]; 8];
    let mut c = 0;
    while c < 8 {
        let mut i = 0;
        while i < 32 {
            t[c][i] = (2 * c + i % 2) as u8;
            i += 1;
        }
        c += 1;
    }
    t
};
static PAIR: [[u8; 32]; 4] = {
    let mut t = [[0u8; 32]; 4];
    let mut c = 0;
    while c < 4 {
        let mut i = 0;
        while i < 32 {
            t[c][i] = (4 * c + 2 * (i / 16) + i % 2) as u8;
            i += 1;
        }
        c += 1;
    }
    t
};

#[inline(always)]
unsafe fn ctrl(t: &[u8; 32]) -> __m256i {
    _mm256_loadu_si256(t.as_ptr() as *const __m256i)
}

/// For 16-element sub-blocks: from `s16` (i16 lane `j` = scale `j`) the vector for chunk `c`:
/// lanes 0..7 = scale `2c`, lanes 8..15 = scale `2c+1`. One byte shuffle per chunk from the
/// 128-bit half holding those scales, broadcast to both halves.
#[inline(always)]
unsafe fn split_scales(s16: __m256i, out: &mut [__m256i; 8]) {
    let halves = [
        _mm256_permute2x128_si256::<0x00>(s16, s16),
        _mm256_permute2x128_si256::<0x11>(s16, s16),
    ];
    for (c, o) in out.iter_mut().enumerate() {
        *o = _mm256_shuffle_epi8(halves[c / 4], ctrl(&PAIR[c % 4]));
    }
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

#[inline(always)]
unsafe fn bytes(v: i8) -> __m256i {
    _mm256_set1_epi8(v)
}

/// 6-bit scales and mins of Q4_K / Q5_K as 8 bytes each (`S_j`, `M_j` in byte `j`).
#[inline(always)]
unsafe fn k4_scales(p: *const u8) -> (u64, u64) {
    let w0 = (p as *const u32).read_unaligned();
    let w1 = (p.add(4) as *const u32).read_unaligned();
    let w2 = (p.add(8) as *const u32).read_unaligned();
    let s_lo = w0 & 0x3F3F_3F3F;
    let m_lo = w1 & 0x3F3F_3F3F;
    let s_hi = (w2 & 0x0F0F_0F0F) | (((w0 >> 6) & 0x0303_0303) << 4);
    let m_hi = ((w2 >> 4) & 0x0F0F_0F0F) | (((w1 >> 6) & 0x0303_0303) << 4);
    (
        s_lo as u64 | (s_hi as u64) << 32,
        m_lo as u64 | (m_hi as u64) << 32,
    )
}

/// Q4_K / Q5_K: one scale per 32-element chunk; mins duplicated per bsum pair.
#[inline(always)]
unsafe fn k4_fill(p: *const u8, k: &mut KBlock) {
    k.d = f16_at(p);
    k.dmin = f16_at(p.add(2));
    let (s, m) = k4_scales(p.add(4));
    // All 8 scales as i16 in both 128-bit halves; chunk c broadcasts lane c.
    let s8 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(s as i64)));
    for (c, v) in k.scales.iter_mut().enumerate() {
        *v = _mm256_shuffle_epi8(s8, ctrl(&PICK[c]));
    }
    let m8 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(m as i64));
    k.mins = _mm256_set_m128i(_mm_unpackhi_epi16(m8, m8), _mm_unpacklo_epi16(m8, m8));
}

impl KQuant for Q4K {
    const BYTES: usize = 144;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn decode<E: Engine>(p: *const u8, k: &mut KBlock) {
        k4_fill(p, k);
        for h in 0..4 {
            let raw = load(p.add(16 + 32 * h));
            k.codes[2 * h] = _mm256_and_si256(raw, bytes(0x0F));
            k.codes[2 * h + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), bytes(0x0F));
        }
    }
}

impl KQuant for Q5K {
    const BYTES: usize = 176;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn decode<E: Engine>(p: *const u8, k: &mut KBlock) {
        k4_fill(p, k);
        // Bit j of qh[l] is bit 4 of element 32j + l; shift the plane down 2 bits per pair.
        let mut qh = load(p.add(16));
        for h in 0..4 {
            let raw = load(p.add(48 + 32 * h));
            let lo = _mm256_and_si256(raw, bytes(0x0F));
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), bytes(0x0F));
            let b_lo = _mm256_and_si256(_mm256_slli_epi16::<4>(qh), bytes(0x10));
            let b_hi = _mm256_and_si256(_mm256_slli_epi16::<3>(qh), bytes(0x10));
            k.codes[2 * h] = _mm256_or_si256(lo, b_lo);
            k.codes[2 * h + 1] = _mm256_or_si256(hi, b_hi);
            qh = _mm256_srli_epi16::<2>(qh);
        }
    }
}

impl KQuant for Q6K {
    const BYTES: usize = 210;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn decode<E: Engine>(p: *const u8, k: &mut KBlock) {
        k.d = f16_at(p.add(208));
        let s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
        split_scales(s16, &mut k.scales);
        // Σ S_j·(Σ v·q − 32·B_j): −32·S_j against the bsums.
        k.mins = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<5>(s16));
        let m4 = bytes(0x0F);
        let m30 = bytes(0x30);
        for h in 0..2 {
            let l0 = load(p.add(64 * h));
            let l1 = load(p.add(64 * h + 32));
            let qh = load(p.add(128 + 32 * h));
            let hb0 = _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30);
            let hb1 = _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30);
            let hb2 = _mm256_and_si256(qh, m30);
            let hb3 = _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30);
            k.codes[4 * h] = _mm256_or_si256(_mm256_and_si256(l0, m4), hb0);
            k.codes[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), hb1);
            k.codes[4 * h + 2] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4), hb2);
            k.codes[4 * h + 3] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4), hb3);
        }
    }
}

impl KQuant for Q2K {
    const BYTES: usize = 84;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn decode<E: Engine>(p: *const u8, k: &mut KBlock) {
        k.d = f16_at(p.add(80));
        k.dmin = f16_at(p.add(82));
        let sm = _mm_loadu_si128(p as *const __m128i);
        let m4 = _mm_set1_epi8(0x0F);
        let s16 = _mm256_cvtepu8_epi16(_mm_and_si128(sm, m4));
        k.mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sm), m4));
        split_scales(s16, &mut k.scales);
        let m3 = bytes(0x03);
        for h in 0..2 {
            let q = load(p.add(16 + 32 * h));
            k.codes[4 * h] = _mm256_and_si256(q, m3);
            k.codes[4 * h + 1] = _mm256_and_si256(_mm256_srli_epi16::<2>(q), m3);
            k.codes[4 * h + 2] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m3);
            k.codes[4 * h + 3] = _mm256_and_si256(_mm256_srli_epi16::<6>(q), m3);
        }
    }
}

impl KQuant for Q3K {
    const BYTES: usize = 110;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn decode<E: Engine>(p: *const u8, k: &mut KBlock) {
        k.d = f16_at(p.add(108));
        let sc = core::slice::from_raw_parts(p.add(96), 12);
        let s: [i16; 16] = core::array::from_fn(|j| q3k_scale(sc, j) as i16);
        let s16 = _mm256_loadu_si256(s.as_ptr() as *const __m256i);
        split_scales(s16, &mut k.scales);
        // Codes v = lo2 + 4·hb ∈ [0, 7]: Σ S_j·(Σ v·q − 4·B_j).
        k.mins = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<2>(s16));
        let m3 = bytes(0x03);
        let m4 = bytes(0x04);
        // Bit k of hmask[l] is the high bit of element 32k + l; shift the plane 1 bit per chunk.
        let mut hm = load(p);
        for h in 0..2 {
            let q = load(p.add(32 + 32 * h));
            let lo = [
                _mm256_and_si256(q, m3),
                _mm256_and_si256(_mm256_srli_epi16::<2>(q), m3),
                _mm256_and_si256(_mm256_srli_epi16::<4>(q), m3),
                _mm256_and_si256(_mm256_srli_epi16::<6>(q), m3),
            ];
            for (s, lo) in lo.into_iter().enumerate() {
                let hb = _mm256_and_si256(_mm256_slli_epi16::<2>(hm), m4);
                k.codes[4 * h + s] = _mm256_or_si256(lo, hb);
                hm = _mm256_srli_epi16::<1>(hm);
            }
        }
    }
}

/// Dots of one weight row with activation rows `t0..t0+T`.
#[inline(always)]
pub(crate) unsafe fn kquant_rows<E: Engine, K: KQuant, const T: usize>(
    w: &[u8],
    a: &Acts,
    t0: usize,
    out: *mut f32,
    os: usize,
) {
    let nb = a.nb;
    assert_eq!(w.len(), nb * K::BYTES);
    let rows = Rows::<T>::new(a, t0);
    let wp = w.as_ptr();
    let zero = _mm256_setzero_si256();
    let mut blk = KBlock {
        codes: [zero; 8],
        scales: [zero; 8],
        mins: zero,
        d: 0.0,
        dmin: 0.0,
    };
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        if t0 == 0 {
            prefetch_ahead(wp.add(b * K::BYTES), K::BYTES);
        }
        K::decode::<E>(wp.add(b * K::BYTES), &mut blk);
        for t in 0..T {
            let q = rows.qs[t].add(256 * b) as *const u8;
            // Two chains so the madd latency overlaps.
            let mut i0 = zero;
            let mut i1 = zero;
            for c in (0..8).step_by(2) {
                let p0 = _mm256_maddubs_epi16(blk.codes[c], load(q.add(32 * c)));
                let p1 = _mm256_maddubs_epi16(blk.codes[c + 1], load(q.add(32 * c + 32)));
                i0 = E::madd16(i0, p0, blk.scales[c]);
                i1 = E::madd16(i1, p1, blk.scales[c + 1]);
            }
            let bs = _mm256_loadu_si256(rows.bsums[t].add(16 * b) as *const __m256i);
            let da = *rows.d[t].add(b);
            if K::HAS_MIN {
                let isum = _mm256_add_epi32(i0, i1);
                let msum = _mm256_madd_epi16(bs, blk.mins);
                acc[t] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(blk.d * da), acc[t]);
                acc[t] = _mm256_fnmadd_ps(
                    _mm256_cvtepi32_ps(msum),
                    _mm256_set1_ps(blk.dmin * da),
                    acc[t],
                );
            } else {
                let isum = E::madd16(_mm256_add_epi32(i0, i1), bs, blk.mins);
                acc[t] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(blk.d * da), acc[t]);
            }
        }
    }
    for t in 0..T {
        *out.add(t * os) = hsum(acc[t]);
    }
}
