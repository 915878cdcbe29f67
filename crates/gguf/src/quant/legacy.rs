//! Legacy 32-element blocks (specs/quants.md §3). Each function decodes whole blocks;
//! the caller has checked that `src` and `dst` hold the same number of blocks.

use super::float::read_f16;

pub const QK: usize = 32;

/// Code `i` of a 16-byte nibble array: byte `i mod 16`, low nibble for `i < 16`.
#[inline]
pub fn legacy_nibble(qs: &[u8], i: usize) -> u8 {
    (qs[i % 16] >> (4 * (i / 16))) & 0xF
}

/// 5-bit code `i` of Q5_0 / Q5_1: nibble plus bit `i` of the little-endian `qh` word.
#[inline]
pub fn legacy_code5(qh: u32, qs: &[u8], i: usize) -> u8 {
    legacy_nibble(qs, i) | ((((qh >> i) & 1) as u8) << 4)
}

#[inline]
fn read_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

pub(crate) fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(QK)) {
        let d = read_f16(&b[0..]);
        let qs = &b[2..18];
        for (i, y) in y.iter_mut().enumerate() {
            *y = d * (legacy_nibble(qs, i) as i32 - 8) as f32;
        }
    }
}

pub(crate) fn dequantize_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(QK)) {
        let d = read_f16(&b[0..]);
        let m = read_f16(&b[2..]);
        let qs = &b[4..20];
        for (i, y) in y.iter_mut().enumerate() {
            *y = d * legacy_nibble(qs, i) as f32 + m;
        }
    }
}

pub(crate) fn dequantize_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(QK)) {
        let d = read_f16(&b[0..]);
        let qh = read_u32(&b[2..]);
        let qs = &b[6..22];
        for (i, y) in y.iter_mut().enumerate() {
            *y = d * (legacy_code5(qh, qs, i) as i32 - 16) as f32;
        }
    }
}

pub(crate) fn dequantize_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(24).zip(dst.chunks_exact_mut(QK)) {
        let d = read_f16(&b[0..]);
        let m = read_f16(&b[2..]);
        let qh = read_u32(&b[4..]);
        let qs = &b[8..24];
        for (i, y) in y.iter_mut().enumerate() {
            *y = d * legacy_code5(qh, qs, i) as f32 + m;
        }
    }
}

pub(crate) fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(QK)) {
        let d = read_f16(&b[0..]);
        for (y, &q) in y.iter_mut().zip(&b[2..34]) {
            *y = d * (q as i8) as f32;
        }
    }
}
