//! Scalar reference dequantization and activation quantization (see shared specs/quants.md).
//! These define the math; SIMD and GPU kernels are tested against them.

use crate::types::GgmlType;

/// Dequantize `n` elements (whole blocks) of type `ty` from `src` into `dst[..n]`.
/// Returns `None` for types without a reference dequantizer or when sizes do not match.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Option<()> {
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
