//! Activation quantizers writing the plane layout directly (`acts.rs`), bit-identical to the
//! scalar quantizers there (llama.cpp's x86 rules; tests/acts.rs checks every byte):
//! - Q8_0 / Q8_1: the instruction sequence of llama.cpp's `quantize_row_q8_0` / `_q8_1`:
//!   `x · (127/amax)`, `vroundps` to nearest even, `vcvtps2dq`, saturating packs; `d` rounded
//!   to f16 (F16C, RNE); Q8_1 `s = f16(d · Σq)` with the unrounded `d`;
//! - Q8_K: the first largest-magnitude value maps to −127 (or, for the interleaved 4-row
//!   quantizer's rows, `+amax` if it occurs), codes round ties to even, `d = 1/iscale` in f32,
//!   per-16 sums. Codes are clamped to [−127, 127] and NaN products give 0 (for finite inputs
//!   the clamp never binds).

use core::arch::x86_64::*;

use crate::quant_dot::acts::Codes;

/// 32 i32 lanes (4 vectors, element order) → 32 i8 in element order, saturating.
#[inline(always)]
unsafe fn pack32(q: [__m256i; 4]) -> __m256i {
    let ab = _mm256_packs_epi32(q[0], q[1]);
    let cd = _mm256_packs_epi32(q[2], q[3]);
    let bytes = _mm256_packs_epi16(ab, cd);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

#[inline(always)]
unsafe fn abs_ps(v: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Clamp to [−127, 127], NaN → 0, to i32.
#[inline(always)]
unsafe fn to_code(q: __m256) -> __m256i {
    let ordered = _mm256_cmp_ps::<_CMP_ORD_Q>(q, q);
    let c = _mm256_min_ps(
        _mm256_max_ps(q, _mm256_set1_ps(-127.0)),
        _mm256_set1_ps(127.0),
    );
    _mm256_cvttps_epi32(_mm256_and_ps(c, ordered))
}

#[inline(always)]
unsafe fn f32_to_f16_to_f32(v: f32) -> f32 {
    let h = _mm_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm_set_ss(v));
    _mm_cvtss_f32(_mm_cvtph_ps(h))
}

/// One token row to Q8_0 planes (`s` absent) or Q8_1 planes: `qs` in element order (in the
/// form `codes`), `d` (f16-rounded, as f32), `s` (Q8_1: the f16 `s` field as f32), `qoff`
/// ([`Codes::LaneOffset`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q8_0_row(
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    mut s: Option<&mut [f32]>,
    codes: Codes,
    mut qoff: Option<&mut [i32]>,
) {
    let bias = _mm256_set1_epi8(if codes == Codes::Biased { -128 } else { 0 });
    // off·(q_{2i} + q_{2i+1}) in i16 pairs (|·| ≤ 128·254), then −(pair + pair).
    let off = match codes {
        Codes::LaneOffset(off) => off,
        _ => 0,
    };
    let offv = _mm256_set1_epi8(off as u8 as i8);
    if let Some(qoff) = qoff.as_deref() {
        assert!(qoff.len() >= x.len() / 32 * 8);
    }
    let nb = x.len() / 32;
    assert!(qs.len() >= nb * 32 && d.len() >= nb);
    if let Some(s) = s.as_deref() {
        assert!(s.len() >= nb);
    }
    for b in 0..nb {
        let xp = x.as_ptr().add(32 * b);
        let v: [__m256; 4] = core::array::from_fn(|j| _mm256_loadu_ps(xp.add(8 * j)));
        let m = _mm256_max_ps(
            _mm256_max_ps(_mm256_max_ps(abs_ps(v[0]), abs_ps(v[1])), abs_ps(v[2])),
            abs_ps(v[3]),
        );
        let amax = hmax(m);
        let db = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let idv = _mm256_set1_ps(id);
        let q = v.map(|v| {
            _mm256_cvtps_epi32(_mm256_round_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(_mm256_mul_ps(v, idv)))
        });
        let bytes = pack32(q);
        _mm256_storeu_si256(
            qs.as_mut_ptr().add(32 * b) as *mut __m256i,
            _mm256_xor_si256(bytes, bias),
        );
        if let Some(qoff) = qoff.as_deref_mut() {
            let pairs = _mm256_maddubs_epi16(offv, bytes);
            let lanes = _mm256_madd_epi16(pairs, _mm256_set1_epi16(-1));
            _mm256_storeu_si256(qoff.as_mut_ptr().add(8 * b) as *mut __m256i, lanes);
        }
        d[b] = f32_to_f16_to_f32(db);
        if let Some(s) = s.as_deref_mut() {
            let sum = hsum_i32(_mm256_add_epi32(
                _mm256_add_epi32(q[0], q[1]),
                _mm256_add_epi32(q[2], q[3]),
            ));
            s[b] = f32_to_f16_to_f32(db * sum as f32);
        }
    }
}

/// One token row to Q8_K planes: `qs` linear, `d` (f32), `bsums` (16 per block). With
/// `prefer_positive`, a block whose largest magnitude occurs as `+amax` anywhere takes the
/// positive sign (the interleaved 4-row quantizer's rule); else the first such element's sign.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q8_k_row(
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    bsums: &mut [i16],
    prefer_positive: bool,
) {
    let nb = x.len() / 256;
    assert!(qs.len() >= nb * 256 && d.len() >= nb && bsums.len() >= nb * 16);
    for b in 0..nb {
        let xp = x.as_ptr().add(256 * b);
        let mut m = _mm256_setzero_ps();
        for j in 0..32 {
            m = _mm256_max_ps(abs_ps(_mm256_loadu_ps(xp.add(8 * j))), m);
        }
        let amax = hmax(m);
        let qp = qs.as_mut_ptr().add(256 * b);
        if amax == 0.0 {
            core::ptr::write_bytes(qp, 0, 256);
            d[b] = 0.0;
            bsums[16 * b..16 * b + 16].fill(0);
            continue;
        }
        let am = _mm256_set1_ps(amax);
        let mut vmax = 0.0;
        if prefer_positive {
            let mut hit = 0;
            for j in 0..32 {
                let v = _mm256_loadu_ps(xp.add(8 * j));
                hit |= _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, am));
            }
            if hit != 0 {
                vmax = amax;
            }
        }
        if vmax == 0.0 {
            // The first element of largest magnitude, with its sign.
            for j in 0..32 {
                let v = _mm256_loadu_ps(xp.add(8 * j));
                let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(abs_ps(v), am));
                if hit != 0 {
                    vmax = *xp.add(8 * j + hit.trailing_zeros() as usize);
                    break;
                }
            }
        }
        let iscale = -127.0 / vmax;
        let isv = _mm256_set1_ps(iscale);
        for c in 0..8 {
            let q: [__m256i; 4] = core::array::from_fn(|j| {
                let v = _mm256_loadu_ps(xp.add(32 * c + 8 * j));
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_mul_ps(isv, v),
                );
                to_code(r)
            });
            bsums[16 * b + 2 * c] = hsum_i32(_mm256_add_epi32(q[0], q[1])) as i16;
            bsums[16 * b + 2 * c + 1] = hsum_i32(_mm256_add_epi32(q[2], q[3])) as i16;
            _mm256_storeu_si256(qp.add(32 * c) as *mut __m256i, pack32(q));
        }
        d[b] = 1.0 / iscale;
    }
}
