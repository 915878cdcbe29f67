//! K-quant super-blocks against Q8_K activations, in llama.cpp's summation order per route
//! (`scalar::vec_dot_k`, `tiled_k`, `repacked_q4_k` define it).
//!
//! A super-block is decoded into 8 vectors of 32 unsigned codes plus, per vector, an i16 scale
//! vector (sub-block scale for each `vpmaddubsw` pair lane). Per token the chunk products
//! `madd16(maddubs(codes_c, q_c), scales_c)` leave in i32 lane `k` the bytes `4k..4k+3` of each
//! chunk: llama.cpp's vec_dot lanes. The constant offsets of Q3_K (−4) and Q6_K (−32) are folded
//! in the integer domain through the bsums (`mins = −offset·S_j`), lane by lane as llama.cpp's
//! Q6_K does; Q3_K's vec_dot instead multiplies the signed values `v − 4` (sign trick), because
//! llama.cpp's lanes hold those. The mins of Q2_K, Q4_K and Q5_K (`M_j · bsums`) are a separate
//! integer vector, folded in f32 where each route folds them. The tiled and repacked routes sum
//! a block's lanes to whole integers (4 tokens at once) and accumulate 4 tokens per vector.

use core::arch::x86_64::*;

use kestrel_gguf::quant::q3k_scale;

use super::{f16_at, hsum, prefetch_ahead, reduce4, Engine, Rows};
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

/// Which K-quant a kernel is for (selects the vec_dot mins handling).
#[derive(PartialEq, Eq)]
pub(crate) enum Kind {
    Q2,
    Q3,
    Q4,
    Q5,
    Q6,
}

pub(crate) trait KQuant {
    const BYTES: usize;
    const KIND: Kind;
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
    const KIND: Kind = Kind::Q4;
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
    const KIND: Kind = Kind::Q5;
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
    const KIND: Kind = Kind::Q6;
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
    const KIND: Kind = Kind::Q2;
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
    const KIND: Kind = Kind::Q3;
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

/// The routes (`RouteId` of `super::row_kernel`).
pub(crate) const VEC_DOT: u8 = 0;
pub(crate) const TILED: u8 = 1;
pub(crate) const REPACKED: u8 = 2;

/// Dots of one weight row with activation rows `t0..t0+T` on route `R`. The repacked route
/// (tiles of 8) sends the tokens below `a.n_x4` to the token-lane GEMM and the rest, one by
/// one, to the GEMV.
#[inline(always)]
pub(crate) unsafe fn kquant_rows<E: Engine, K: KQuant, const R: u8, const T: usize>(
    w: &[u8],
    a: &Acts,
    t0: usize,
    out: *mut f32,
    os: usize,
) {
    if R != REPACKED {
        return kquant_core::<E, K, R, T>(w, a, t0, out, os);
    }
    let n_gemm = a.n_x4.saturating_sub(t0).min(T);
    if n_gemm > 0 {
        assert!(K::KIND == Kind::Q4 && t0.is_multiple_of(8));
        q4k_gemm8::<E>(w, a, t0 / 8, n_gemm, out, os);
    }
    for i in n_gemm..T {
        kquant_core::<E, K, REPACKED, 1>(w, a, t0 + i, out.add(i * os), os);
    }
}

/// [`kquant_rows`] for the vec_dot and tiled routes, and the repacked GEMV.
#[inline(always)]
unsafe fn kquant_core<E: Engine, K: KQuant, const R: u8, const T: usize>(
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
    // VecDot: per-token lanes; `accm` (Q4_K's 4-lane mins) and `summs` (Q5_K).
    let mut acc = [_mm256_setzero_ps(); T];
    let mut accm = [_mm_setzero_ps(); T];
    let mut summs = [0f32; T];
    // Tiled / repacked GEMV: lane t = token t (GEMV with one token: lanes 0, 1 = acc, accm).
    let mut acc4 = _mm_setzero_ps();
    let mut accm4 = _mm_setzero_ps();
    for b in 0..nb {
        if t0 == 0 {
            prefetch_ahead(wp.add(b * K::BYTES), K::BYTES);
        }
        K::decode::<E>(wp.add(b * K::BYTES), &mut blk);
        // Q3_K vec_dot: the signed values v − 4 (|v − 4| ≤ 4), as llama.cpp's lanes hold them.
        let signed = R == VEC_DOT && K::KIND == Kind::Q3;
        let mut wv = blk.codes;
        if signed {
            for c in 0..8 {
                wv[c] = _mm256_sub_epi8(blk.codes[c], _mm256_set1_epi8(4));
                blk.codes[c] = _mm256_sign_epi8(wv[c], wv[c]);
            }
        }
        let da: [f32; T] = core::array::from_fn(|t| *rows.d[t].add(b));
        let mut isums = [zero; T];
        let mut msums = [zero; T];
        for t in 0..T {
            let q = rows.qs[t].add(256 * b) as *const u8;
            let bs = _mm256_loadu_si256(rows.bsums[t].add(16 * b) as *const __m256i);
            // Two chains so the madd latency overlaps.
            let mut i0 = zero;
            let mut i1 = zero;
            for c in (0..8).step_by(2) {
                let (mut q0, mut q1) = (load(q.add(32 * c)), load(q.add(32 * c + 32)));
                if signed {
                    q0 = _mm256_sign_epi8(q0, wv[c]);
                    q1 = _mm256_sign_epi8(q1, wv[c + 1]);
                }
                let p0 = _mm256_maddubs_epi16(blk.codes[c], q0);
                let p1 = _mm256_maddubs_epi16(blk.codes[c + 1], q1);
                i0 = E::madd16(i0, p0, blk.scales[c]);
                i1 = E::madd16(i1, p1, blk.scales[c + 1]);
            }
            let mut isum = _mm256_add_epi32(i0, i1);
            if K::HAS_MIN {
                msums[t] = _mm256_madd_epi16(bs, blk.mins);
            } else if !signed {
                isum = E::madd16(isum, bs, blk.mins);
            }
            isums[t] = isum;
            if R == VEC_DOT {
                let d = _mm256_set1_ps(da[t] * blk.d);
                let dmn = -da[t] * blk.dmin;
                match K::KIND {
                    Kind::Q2 => {
                        let m = _mm256_cvtepi32_ps(msums[t]);
                        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dmn), m, acc[t]);
                    }
                    Kind::Q4 => {
                        let p4 = _mm_hadd_epi32(
                            _mm256_castsi256_si128(msums[t]),
                            _mm256_extracti128_si256::<1>(msums[t]),
                        );
                        accm[t] = _mm_fmadd_ps(_mm_set1_ps(dmn), _mm_cvtepi32_ps(p4), accm[t]);
                    }
                    Kind::Q5 => {
                        let m = hsum_i32(msums[t]);
                        summs[t] = (m as f32).mul_add(dmn, summs[t]);
                    }
                    _ => {}
                }
                acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc[t]);
            }
        }
        if R == VEC_DOT {
            continue;
        }
        if R == REPACKED && T == 1 {
            // [I, M]: acc = fma(I, d_w·d_a, acc), accm = fma(M, dmin·d_a, accm) side by side.
            let im = _mm_cvtepi32_ps(reduce4([isums[0], msums[0], zero, zero]));
            let s = _mm_mul_ps(_mm_setr_ps(blk.d, blk.dmin, 0.0, 0.0), _mm_set1_ps(da[0]));
            acc4 = _mm_fmadd_ps(im, s, acc4);
            continue;
        }
        let da4 = {
            let v: [f32; 4] = core::array::from_fn(|t| if t < T { da[t] } else { 0.0 });
            _mm_loadu_ps(v.as_ptr())
        };
        let pad = |v: &[__m256i; T]| -> [__m256i; 4] {
            core::array::from_fn(|t| if t < T { v[t] } else { zero })
        };
        let i4 = _mm_cvtepi32_ps(reduce4(pad(&isums)));
        if R == TILED {
            let mut r = _mm_mul_ps(i4, _mm_set1_ps(blk.d));
            if K::HAS_MIN {
                let m4 = _mm_cvtepi32_ps(reduce4(pad(&msums)));
                r = _mm_fnmadd_ps(_mm_set1_ps(blk.dmin), m4, r);
            }
            acc4 = _mm_fmadd_ps(r, da4, acc4);
        } else {
            let m4 = _mm_cvtepi32_ps(reduce4(pad(&msums)));
            acc4 = _mm_fmadd_ps(i4, _mm_mul_ps(_mm_set1_ps(blk.d), da4), acc4);
            accm4 = _mm_fmadd_ps(m4, _mm_mul_ps(_mm_set1_ps(blk.dmin), da4), accm4);
        }
    }
    if R == VEC_DOT {
        for t in 0..T {
            let mut s = hsum(acc[t]);
            match K::KIND {
                Kind::Q4 => {
                    let m = accm[t];
                    let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
                    let m = _mm_add_ss(m, _mm_movehdup_ps(m));
                    s += _mm_cvtss_f32(m);
                }
                Kind::Q5 => s += summs[t],
                _ => {}
            }
            *out.add(t * os) = s;
        }
    } else if R == REPACKED && T == 1 {
        let mut r = [0f32; 4];
        _mm_storeu_ps(r.as_mut_ptr(), acc4);
        *out = r[0] - r[1];
    } else {
        let mut r = [0f32; 4];
        _mm_storeu_ps(r.as_mut_ptr(), _mm_sub_ps(acc4, accm4));
        for t in 0..T {
            *out.add(t * os) = r[t];
        }
    }
}

/// The repacked Q4_K GEMM for the (up to 8) tokens of token-lane tile `tile` (`a.lane_*`),
/// writing the first `n` of them: lane t = token t. Per 4-code group one dword of weight codes
/// is broadcast against the 8 tokens' 4 codes (`vpdpbusd` / `vpmaddubsw`), so each chunk's raw
/// dot `R_c` lands in the token's lane with no horizontal sums. Then per 64 elements `I =
/// S_a·R_a + S_b·R_b` and `M = M_a·B'_a + M_b·B'_b` in f32, exactly (integers below 2^24),
/// `acc = fma(I, d_w·d_a, acc)`, `accm = fma(M, dmin·d_a, accm)`; result `acc − accm`.
#[inline(always)]
unsafe fn q4k_gemm8<E: Engine>(
    w: &[u8],
    a: &Acts,
    tile: usize,
    n: usize,
    out: *mut f32,
    os: usize,
) {
    let nb = a.nb;
    assert!(a.lane_qs.len() >= (tile + 1) * nb * 2048);
    let qs = a.lane_qs.as_ptr().add(tile * nb * 2048);
    let bp = a.lane_bp.as_ptr().add(tile * nb * 64);
    let dl = a.lane_d.as_ptr().add(tile * nb * 8);
    let wp = w.as_ptr();
    let zero = _mm256_setzero_si256();
    let mut acc = _mm256_setzero_ps();
    let mut accm = _mm256_setzero_ps();
    #[repr(C, align(32))]
    struct Codes([u8; 256]);
    let mut codes = Codes([0; 256]);
    for b in 0..nb {
        let p = wp.add(b * 144);
        if tile == 0 {
            prefetch_ahead(p, 144);
        }
        let (dw, dmin) = (f16_at(p), f16_at(p.add(2)));
        let (sc, mn) = k4_scales(p.add(4));
        for h in 0..4 {
            let raw = load(p.add(16 + 32 * h));
            let lo = _mm256_and_si256(raw, bytes(0x0F));
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), bytes(0x0F));
            _mm256_store_si256(codes.0.as_mut_ptr().add(64 * h) as *mut __m256i, lo);
            _mm256_store_si256(codes.0.as_mut_ptr().add(64 * h + 32) as *mut __m256i, hi);
        }
        // Read back through an opaque reference: each dword becomes a broadcast load.
        let cw = core::hint::black_box(&codes.0).as_ptr() as *const i32;
        let da = _mm256_loadu_ps(dl.add(8 * b));
        let s8 = _mm256_mul_ps(_mm256_set1_ps(dw), da);
        let sm8 = _mm256_mul_ps(_mm256_set1_ps(dmin), da);
        let qb = qs.add(b * 2048);
        for sb in 0..4 {
            let mut r = [zero; 2];
            for (h, r) in r.iter_mut().enumerate() {
                let c = 2 * sb + h;
                for g in 0..8 {
                    let gi = 8 * c + g;
                    let wv = _mm256_set1_epi32(*cw.add(gi));
                    *r = E::dot_u8i8(*r, wv, load(qb.add(32 * gi) as *const u8));
                }
            }
            let s = |j: usize| ((sc >> (8 * j)) & 0xFF) as f32;
            let m = |j: usize| ((mn >> (8 * j)) & 0xFF) as f32;
            let (ja, jb) = (2 * sb, 2 * sb + 1);
            let rb = _mm256_mul_ps(_mm256_set1_ps(s(jb)), _mm256_cvtepi32_ps(r[1]));
            let i = _mm256_fmadd_ps(_mm256_set1_ps(s(ja)), _mm256_cvtepi32_ps(r[0]), rb);
            let bpb = bp.add((b * 8 + ja) * 8);
            let mb = _mm256_mul_ps(_mm256_set1_ps(m(jb)), _mm256_loadu_ps(bpb.add(8)));
            let mv = _mm256_fmadd_ps(_mm256_set1_ps(m(ja)), _mm256_loadu_ps(bpb), mb);
            acc = _mm256_fmadd_ps(i, s8, acc);
            accm = _mm256_fmadd_ps(mv, sm8, accm);
        }
    }
    let mut r = [0f32; 8];
    _mm256_storeu_ps(r.as_mut_ptr(), _mm256_sub_ps(acc, accm));
    for (t, &v) in r.iter().enumerate().take(n) {
        *out.add(t * os) = v;
    }
}

/// Sum of the 8 i32 lanes.
#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}
