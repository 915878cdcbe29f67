//! Launchers, one file per op, named as the CPU backend's `cpu/src/ops/*.rs` and the kernels in
//! `kernels/*.cu`. Each checks shapes, then queues its kernel(s) on the backend's stream.

pub mod act;
pub mod attention;
pub mod elementwise;
pub mod embed;
pub mod gemm;
pub mod matmul;
pub mod norm;
pub mod rope;
