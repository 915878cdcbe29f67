//! CPU ops, one file each; the CUDA versions live under the same names in the cuda crate.

pub mod act;
pub mod attention;
pub mod elementwise;
pub mod matmul;
pub mod norm;
pub mod rope;
