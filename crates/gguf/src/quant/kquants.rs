//! K-quant 256-element super-blocks (specs/quants.md §4). Written per element from the index
//! formulas so that each line can be checked against the spec; speed is the kernels' job.
//! The caller has checked that `src` and `dst` hold the same number of blocks.

use super::float::read_f16;
use crate::types::QK_K;

/// Signed 6-bit scale `j` (0..16) of a Q3_K block from its 12 packed scale bytes, in [-32, 31].
#[inline]
pub fn q3k_scale(scales: &[u8], j: usize) -> i8 {
    let lo4 = if j < 8 {
        scales[j] & 0xF
    } else {
        scales[j - 8] >> 4
    };
    let hi2 = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo4 | (hi2 << 4)) as i8 - 32
}

/// 6-bit (scale, min) pair `j` (0..8) of a Q4_K / Q5_K block from its 12 packed bytes.
#[inline]
pub fn k4_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

pub(crate) fn dequantize_q2_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(84).zip(dst.chunks_exact_mut(QK_K)) {
        let (scales, qs) = (&b[0..16], &b[16..80]);
        let d = read_f16(&b[80..]);
        let dmin = read_f16(&b[82..]);
        for (i, y) in y.iter_mut().enumerate() {
            let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
            let c = (qs[32 * h + l] >> (2 * s)) & 3;
            let sm = scales[i / 16];
            let (sc, m) = ((sm & 0xF) as f32, (sm >> 4) as f32);
            *y = (d * sc) * c as f32 - dmin * m;
        }
    }
}

pub(crate) fn dequantize_q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(110).zip(dst.chunks_exact_mut(QK_K)) {
        let (hmask, qs, scales) = (&b[0..32], &b[32..96], &b[96..108]);
        let d = read_f16(&b[108..]);
        for (i, y) in y.iter_mut().enumerate() {
            let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
            let lo2 = ((qs[32 * h + l] >> (2 * s)) & 3) as i32;
            let hb = ((hmask[l] >> (i / 32)) & 1) as i32;
            let c = lo2 - 4 * (1 - hb);
            let sc = q3k_scale(scales, i / 16) as f32;
            *y = (d * sc) * c as f32;
        }
    }
}

pub(crate) fn dequantize_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(QK_K)) {
        let d = read_f16(&b[0..]);
        let dmin = read_f16(&b[2..]);
        let (scales, qs) = (&b[4..16], &b[16..144]);
        for (i, y) in y.iter_mut().enumerate() {
            let (p, t, l) = (i / 64, (i / 32) % 2, i % 32);
            let c = (qs[32 * p + l] >> (4 * t)) & 0xF;
            let (sc, m) = k4_scale_min(scales, i / 32);
            *y = (d * sc as f32) * c as f32 - dmin * m as f32;
        }
    }
}

pub(crate) fn dequantize_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(176).zip(dst.chunks_exact_mut(QK_K)) {
        let d = read_f16(&b[0..]);
        let dmin = read_f16(&b[2..]);
        let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
        for (i, y) in y.iter_mut().enumerate() {
            let (p, t, l, j) = (i / 64, (i / 32) % 2, i % 32, i / 32);
            let c = ((qs[32 * p + l] >> (4 * t)) & 0xF) | (((qh[l] >> j) & 1) << 4);
            let (sc, m) = k4_scale_min(scales, j);
            *y = (d * sc as f32) * c as f32 - dmin * m as f32;
        }
    }
}

pub(crate) fn dequantize_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(QK_K)) {
        let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
        let d = read_f16(&b[208..]);
        for (i, y) in y.iter_mut().enumerate() {
            let (h, s, l) = (i / 128, (i / 32) % 4, i % 32);
            let lo4 = (ql[64 * h + 32 * (s % 2) + l] >> (4 * (s / 2))) & 0xF;
            let hi2 = (qh[32 * h + l] >> (2 * s)) & 3;
            let c = (lo4 | (hi2 << 4)) as i32 - 32;
            let sc = scales[i / 16] as i8 as f32;
            *y = (d * sc) * c as f32;
        }
    }
}

pub(crate) fn dequantize_q8_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(292).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for (y, &q) in y.iter_mut().zip(&b[4..260]) {
            *y = d * (q as i8) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q3k_scales_unpack_per_spec_layout() {
        // Scale j = 5 (low nibble of byte 5, high bits at byte 9 bits 2-3) and j = 13
        // (high nibble of byte 5, high bits at byte 9 bits 6-7).
        let mut b = [0u8; 12];
        b[5] = 0xA3;
        b[9] = 0b1001_0000 | 0b0000_1100;
        assert_eq!(q3k_scale(&b, 5), (0x3 | 3 << 4) - 32);
        assert_eq!(q3k_scale(&b, 13), (0xA | 2 << 4) - 32);
        assert_eq!(q3k_scale(&[0; 12], 0), -32);
        assert_eq!(q3k_scale(&[0xFF; 12], 15), 31);
    }

    #[test]
    fn k4_scale_min_unpacks_high_bits() {
        let mut b = [0u8; 12];
        b[1] = 0b11_000101; // S_1 = 5, top bits of S_5 = 3
        b[5] = 0b10_000111; // M_1 = 7, top bits of M_5 = 2
        b[9] = 0x4C; // low bits: S_5 = 0xC, M_5 = 0x4
        assert_eq!(k4_scale_min(&b, 1), (5, 7));
        assert_eq!(k4_scale_min(&b, 5), (0xC | 3 << 4, 0x4 | 2 << 4));
    }
}
