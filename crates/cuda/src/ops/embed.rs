//! Embedding lookup (kernels/embed.cu).

use crate::backend::{grid_for, Arg, CudaBackend, CudaStep, CudaTensor, CudaWeight};

pub fn embed(
    b: &CudaBackend,
    table: &CudaWeight,
    step: &CudaStep,
    scale: f32,
    out: &mut CudaTensor,
) {
    assert_eq!(
        out.cols, table.cols,
        "embed: output has {} columns, the table {}",
        out.cols, table.cols
    );
    assert!(
        out.rows >= step.n_tokens,
        "embed: {} rows for {} tokens",
        out.rows,
        step.n_tokens
    );
    if step.n_tokens == 0 {
        return;
    }
    let threads = 256;
    b.launch(
        "embed",
        (
            grid_for(table.cols, threads).min(64),
            step.n_tokens as u32,
            1,
        ),
        (threads, 1, 1),
        0,
        &[
            Arg::Ptr(table.ptr),
            Arg::U64(table.row_bytes as u64),
            Arg::I32(table.kernel_type()),
            Arg::I32(table.cols as i32),
            Arg::Ptr(step.tokens),
            Arg::F32(scale),
            Arg::Ptr(out.ptr),
        ],
    );
}
