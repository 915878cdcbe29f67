//! Scalar reference dequantization and activation quantization (see shared specs/quants.md).
//! These define the math; SIMD and GPU kernels are tested against them.
//!
//! API contract (used by the cpu crate and tests):
//! - `dequantize(ty, src, dst)`: `src` holds whole blocks of `ty`, `dst.len()` = elements.
//! - `quantize_q8_0 / quantize_q8_1 / quantize_q8_k(src, dst)`: `src.len()` a multiple of the
//!   block size, `dst.len()` = blocks × bytes per block (34 / 36 / 292).
//!
//! Float evaluation follows the spec's stated order in f32 (Rust never contracts to FMA), so the
//! results are bit-identical to ggml's reference and to the PyPI `gguf` 0.19.0 package
//! (tests/dequant.rs checks that against fixtures made by tools/gen_quant_fixtures.py).

mod activation;
mod float;
mod kquants;
mod legacy;

pub use activation::{encode_q8_k_block, quantize_q8_0, quantize_q8_1, quantize_q8_k};
pub use float::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
pub use kquants::{k4_scale_min, q3k_scale};
pub use legacy::{legacy_code5, legacy_nibble};

use crate::types::GgmlType;

/// Dequantize whole blocks of `ty` from `src` into `dst` (`dst.len()` elements).
/// Errors name the type and the size mismatch.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), String> {
    use GgmlType::*;
    if !can_dequantize(ty) {
        return Err(format!("dequantize: type {ty} is not supported"));
    }
    let (blk, bytes) = (ty.block_size(), ty.type_size());
    if dst.len() % blk != 0 {
        return Err(format!(
            "dequantize {ty}: {} output elements are not a multiple of the block size {blk}",
            dst.len()
        ));
    }
    let n_blocks = dst.len() / blk;
    if src.len() != n_blocks * bytes {
        return Err(format!(
            "dequantize {ty}: {} elements need {} bytes ({n_blocks} blocks of {bytes}), got {} bytes",
            dst.len(),
            n_blocks * bytes,
            src.len()
        ));
    }
    match ty {
        F32 => float::dequantize_f32(src, dst),
        F16 => float::dequantize_f16(src, dst),
        BF16 => float::dequantize_bf16(src, dst),
        Q4_0 => legacy::dequantize_q4_0(src, dst),
        Q4_1 => legacy::dequantize_q4_1(src, dst),
        Q5_0 => legacy::dequantize_q5_0(src, dst),
        Q5_1 => legacy::dequantize_q5_1(src, dst),
        Q8_0 => legacy::dequantize_q8_0(src, dst),
        Q2_K => kquants::dequantize_q2_k(src, dst),
        Q3_K => kquants::dequantize_q3_k(src, dst),
        Q4_K => kquants::dequantize_q4_k(src, dst),
        Q5_K => kquants::dequantize_q5_k(src, dst),
        Q6_K => kquants::dequantize_q6_k(src, dst),
        Q8_K => kquants::dequantize_q8_k(src, dst),
        _ => unreachable!("can_dequantize({ty}) was checked"),
    }
    Ok(())
}

/// Dequantize row `row` of a 2-D tensor of `ty` with `n_cols` elements per row
/// (`tensor_data` = the whole tensor, rows packed back to back; `dst.len()` = `n_cols`).
/// Used for embedding lookups. Errors name the type, the row and the sizes.
pub fn dequantize_row(
    ty: GgmlType,
    tensor_data: &[u8],
    row: usize,
    n_cols: usize,
    dst: &mut [f32],
) -> Result<(), String> {
    if dst.len() != n_cols {
        return Err(format!(
            "dequantize_row {ty}: output has {} elements, row has {n_cols}",
            dst.len()
        ));
    }
    let row_bytes = ty.row_bytes(n_cols as u64).ok_or_else(|| {
        format!(
            "dequantize_row {ty}: {n_cols} columns are not a multiple of the block size {}",
            ty.block_size()
        )
    })?;
    let range = (row as u64)
        .checked_mul(row_bytes)
        .and_then(|start| Some((start, start.checked_add(row_bytes)?)))
        .filter(|&(_, end)| end <= tensor_data.len() as u64)
        .ok_or_else(|| {
            format!(
                "dequantize_row {ty}: row {row} of {row_bytes} bytes is past the end of the {}-byte tensor",
                tensor_data.len()
            )
        })?;
    dequantize(ty, &tensor_data[range.0 as usize..range.1 as usize], dst)
}

/// Types `dequantize` supports.
pub fn can_dequantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16
            | BF16
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q2_K
            | Q3_K
            | Q4_K
            | Q5_K
            | Q6_K
            | Q8_K
    )
}

#[cfg(test)]
mod tests;
