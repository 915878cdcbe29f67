//! out = x · Wᵀ (kernels/quantize.cu + kernels/matvec.cu).
//!
//! Quantized weights: the activations are quantized into arena scratch (one kernel) to the
//! format the CPU backend pairs with the weight type — Q8_1 blocks for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0
//! (the CPU's Q8_0 has the same d and codes), Q8_K for the K-quants — so both backends form the
//! same integer sums; then a dp4a matvec runs with one warp per weight row, 4 rows per block,
//! looping over the tokens 8 at a time inside the kernel (each weight chunk is decoded once per
//! 8 tokens). Float weights (F32/F16/BF16) use the f32 activations directly.

use kestrel_gguf::GgmlType;

use crate::backend::{Arg, CudaBackend, CudaTensor, CudaWeight};

/// Bytes of one Q8_1 activation block (f16 d, f16 s, 32 int8).
pub const Q8_1_BYTES: usize = 36;
/// Bytes of one Q8_K activation block (f32 d, 256 int8, 16 int16 sums).
pub const Q8_K_BYTES: usize = 292;

/// Rows per 128-thread matvec block (one warp per row).
const ROWS_PER_BLOCK: usize = 4;

fn kernel_for(ty: GgmlType) -> Option<&'static str> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 => "matvec_q4_0",
        Q4_1 => "matvec_q4_1",
        Q5_0 => "matvec_q5_0",
        Q5_1 => "matvec_q5_1",
        Q8_0 => "matvec_q8_0",
        Q2_K => "matvec_q2_k",
        Q3_K => "matvec_q3_k",
        Q4_K => "matvec_q4_k",
        Q5_K => "matvec_q5_k",
        Q6_K => "matvec_q6_k",
        F32 => "matvec_f32",
        F16 => "matvec_f16",
        BF16 => "matvec_bf16",
        _ => return None,
    })
}

/// Activation blocks of K-quant weights are Q8_K, of the legacy types Q8_1.
fn uses_q8_k(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q2_K | Q3_K | Q4_K | Q5_K | Q6_K)
}

/// Quantize `x` (rows of `cols`, cols a multiple of 32) into Q8_1 blocks at `dst`.
pub(crate) fn quantize_q8_1(b: &CudaBackend, x: &CudaTensor, dst: u64) {
    quantize(b, "quantize_q8_1", 32, x, dst)
}

/// Quantize `x` (rows of `cols`, cols a multiple of 256) into Q8_K blocks at `dst`.
pub(crate) fn quantize_q8_k(b: &CudaBackend, x: &CudaTensor, dst: u64) {
    quantize(b, "quantize_q8_k", 256, x, dst)
}

fn quantize(b: &CudaBackend, kernel: &str, block: usize, x: &CudaTensor, dst: u64) {
    assert!(x.cols.is_multiple_of(block), "{kernel}: {} columns", x.cols);
    let n_blocks = x.len() / block;
    if n_blocks == 0 {
        return;
    }
    let warps_per_block = 8usize;
    b.launch(
        kernel,
        (n_blocks.div_ceil(warps_per_block) as u32, 1, 1),
        ((warps_per_block * 32) as u32, 1, 1),
        0,
        &[Arg::Ptr(x.ptr), Arg::Ptr(dst), Arg::U64(n_blocks as u64)],
    );
}

pub fn matmul(b: &CudaBackend, w: &CudaWeight, x: &CudaTensor, out: &mut CudaTensor) {
    assert_eq!(
        x.cols, w.cols,
        "matmul: x has {} columns, W {}",
        x.cols, w.cols
    );
    assert_eq!(
        out.cols, w.rows,
        "matmul: out has {} columns, W {} rows",
        out.cols, w.rows
    );
    assert_eq!(
        out.rows, x.rows,
        "matmul: out has {} rows, x {}",
        out.rows, x.rows
    );
    let name =
        kernel_for(w.ty).unwrap_or_else(|| panic!("matmul: weight type {} is not supported", w.ty));
    let n_tok = x.rows;
    if n_tok == 0 || w.rows == 0 {
        return;
    }
    let grid = (w.rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1);
    let block = ((ROWS_PER_BLOCK * 32) as u32, 1, 1);
    if w.ty.is_quantized() {
        let nchunks = w.cols / 32;
        let scratch = if uses_q8_k(w.ty) {
            let s = b.scratch(n_tok * (w.cols / 256) * Q8_K_BYTES);
            quantize_q8_k(b, x, s.ptr);
            s
        } else {
            let s = b.scratch(n_tok * nchunks * Q8_1_BYTES);
            quantize_q8_1(b, x, s.ptr);
            s
        };
        b.launch(
            name,
            grid,
            block,
            0,
            &[
                Arg::Ptr(w.ptr),
                Arg::U64(w.row_bytes as u64),
                Arg::I32(w.rows as i32),
                Arg::I32(nchunks as i32),
                Arg::Ptr(scratch.ptr),
                Arg::Ptr(out.ptr),
                Arg::I32(n_tok as i32),
            ],
        );
    } else {
        b.launch(
            name,
            grid,
            block,
            0,
            &[
                Arg::Ptr(w.ptr),
                Arg::U64(w.row_bytes as u64),
                Arg::I32(w.rows as i32),
                Arg::I32(w.cols as i32),
                Arg::Ptr(x.ptr),
                Arg::Ptr(out.ptr),
                Arg::I32(n_tok as i32),
            ],
        );
    }
}

/// Quantize host values with the GPU kernel (Q8_1 if `k` is false, else Q8_K) and read the
/// blocks back (for tests).
pub fn quantize_to_host(b: &CudaBackend, x: &[f32], k: bool) -> Vec<u8> {
    use kestrel_engine::Backend;
    let mut t = b.alloc(1, x.len());
    b.write(&mut t, x);
    let n_bytes = if k {
        x.len() / 256 * Q8_K_BYTES
    } else {
        x.len() / 32 * Q8_1_BYTES
    };
    let mut scratch = b.scratch(n_bytes);
    b.fill(&mut scratch, f32::NAN);
    if k {
        quantize_q8_k(b, &t, scratch.ptr);
    } else {
        quantize_q8_1(b, &t, scratch.ptr);
    }
    let floats = b.read(&scratch);
    floats
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .take(n_bytes)
        .collect()
}
