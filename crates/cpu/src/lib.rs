//! The CPU backend: the reference every other backend is tested against.

pub mod backend;
pub mod ops;

pub use backend::CpuBackend;
