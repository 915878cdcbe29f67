//! The CPU backend: the reference every other backend is tested against.

pub mod backend;
pub mod ops;
pub mod quant_dot;

pub use backend::{CpuBackend, Precision};
