//! CUDA backend for Kestrel (in progress): the kernel sources and their NVRTC build.

pub mod kernels;
pub mod nvrtc;
