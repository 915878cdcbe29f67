//! Plain float types (specs/quants.md §2) and the scalar conversions every backend shares.

use half::f16;

/// f16 bits → f32 (exact, subnormals included).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    f16::from_bits(h).to_f32()
}

/// f32 → f16 bits, round to nearest even (what F16C, CUDA `__float2half` and NumPy do).
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// bf16 bits → f32: the bits become the upper half of an f32 (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 → bf16 bits with ggml's rule: NaN forced quiet, otherwise round to nearest even
/// (overflow rounds to ±inf, subnormals are kept).
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let n = x.to_bits();
    if n & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((n >> 16) | 0x40) as u16;
    }
    // Largest non-NaN pattern is 0xFF80_0000, so this cannot overflow u32.
    ((n + 0x7FFF + ((n >> 16) & 1)) >> 16) as u16
}

/// Little-endian f16 at `b[0..2]`, widened to f32.
#[inline]
pub(crate) fn read_f16(b: &[u8]) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[0], b[1]]))
}

pub(crate) fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

pub(crate) fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = read_f16(b);
    }
}

pub(crate) fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_encode_rounds_to_nearest_even_and_quiets_nan() {
        // Exactly halfway between two bf16 values: ties go to the even one.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
        // Overflow rounds to infinity.
        assert_eq!(f32_to_bf16(f32::MAX), 0x7F80);
        assert_eq!(f32_to_bf16(f32::NEG_INFINITY), 0xFF80);
        // Signalling NaN becomes quiet, payload's top bits kept.
        assert_eq!(f32_to_bf16(f32::from_bits(0x7F80_0001)), 0x7FC0);
        assert_eq!(f32_to_bf16(f32::from_bits(0xFFA0_0000)), 0xFFE0);
        // Subnormals are not flushed.
        assert_eq!(f32_to_bf16(f32::from_bits(0x0001_0000)), 0x0001);
        for h in [0u16, 0x8000, 0x3F80, 0xC2F7, 0x0001, 0x7F7F] {
            assert_eq!(f32_to_bf16(bf16_to_f32(h)), h);
        }
    }

    #[test]
    fn f16_conversions_are_exact_and_round_to_nearest_even() {
        assert_eq!(f16_to_f32(0x3C00), 1.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0xFBFF), -65504.0);
        // 1 + 2^-11 is halfway between 1 and the next f16: ties to even (1.0).
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3C00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3C02);
        assert_eq!(f32_to_f16(65520.0), 0x7C00);
        for h in 0..=u16::MAX {
            if h & 0x7C00 != 0x7C00 {
                assert_eq!(f32_to_f16(f16_to_f32(h)), h);
            }
        }
    }
}
