//! Scalar reference dequantization and activation quantization (see shared specs/quants.md).
//! These define the math; SIMD and GPU kernels are tested against them.
//!
//! API contract (used by the cpu crate and tests):
//! - `dequantize(ty, src, dst)`: `src` holds whole blocks of `ty`, `dst.len()` = elements.
//! - `quantize_q8_0 / quantize_q8_1 / quantize_q8_k(src, dst)`: `src.len()` a multiple of the
//!   block size, `dst.len()` = blocks × bytes per block (34 / 36 / 292).

use crate::types::GgmlType;

/// Dequantize whole blocks of `ty` from `src` into `dst` (`dst.len()` elements).
/// Errors name the type and the size mismatch.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), String> {
    let _ = (ty, src, dst);
    todo!("written by the quant helper")
}

/// Types `dequantize` supports.
pub fn can_dequantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K
    )
}

/// Reference Q8_0 quantizer (specs/quants.md §5.1).
pub fn quantize_q8_0(src: &[f32], dst: &mut [u8]) {
    let _ = (src, dst);
    todo!("written by the quant helper")
}

/// Reference Q8_1 quantizer, CPU rule for `s` (§5.2).
pub fn quantize_q8_1(src: &[f32], dst: &mut [u8]) {
    let _ = (src, dst);
    todo!("written by the quant helper")
}

/// Reference Q8_K quantizer (§5.3).
pub fn quantize_q8_k(src: &[f32], dst: &mut [u8]) {
    let _ = (src, dst);
    todo!("written by the quant helper")
}
