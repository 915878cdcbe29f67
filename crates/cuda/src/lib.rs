//! CUDA backend for Kestrel: `CudaBackend` implements `kestrel_engine::Backend`, so the one
//! generic `forward` runs on an NVIDIA GPU and gives the CPU backend's tokens.
//!
//! - **Loading**: cudarc with `dynamic-loading`: libcuda and libnvrtc are opened at run time, so
//!   one binary runs with or without a GPU. `CudaBackend::new` returns an error (never panics)
//!   when the driver, a device or NVRTC is missing.
//! - **Kernels**: CUDA C in `kernels/*.cu` (embedded), compiled by NVRTC to a CUBIN for the
//!   device's exact `sm_XY` when the backend is created, and cached on disk by source hash and
//!   arch (`nvrtc.rs`). All modules load up front, so a failure is an error from `new`.
//! - **Memory**: weights are uploaded once, in their GGUF block formats (1-D tensors decoded to
//!   f32; Q6_K and Q8_0 rows repacked for 16-byte loads, `ops/matmul.rs`), except a gathered
//!   table that does not fit, kept in mapped host memory (`table.rs`); KV pools are f16,
//!   `n_slots × kv_dim` per layer; activations come from a stack arena (`arena.rs`) reset by
//!   `begin_step`; the step's metadata goes to one fixed device buffer with one host-to-device
//!   copy (`begin_step`), and kernels read tokens, positions, slots and block tables from there.
//! - **Ops**: launchers in `ops/`, one per op, matching `cpu/src/ops/*`. Matmul inputs are
//!   quantized once (norms and activations write the blocks as they write their output).
//!   Matmuls of many rows (prefill, large decode batches) run as bf16 cuBLAS GEMMs on the
//!   tensor cores instead (`ops/gemm.rs`), from resident bf16 weight copies when
//!   `cache_weights` made them, else dequantized per call.
//! - **Graphs**: decode steps padded to a batch bucket, and one-chunk prefill steps of up to 512
//!   tokens padded to a multiple of 16, are recorded as CUDA graphs and replayed with no
//!   parameter updates (`backend.rs`, `KESTREL_CUDA_GRAPHS`); greedy steps return only
//!   the argmax of each logits row (`argmax_rows`).

mod arena;
mod backend;
pub mod kernels;
pub mod nvrtc;
pub mod ops;
mod table;

pub use backend::{
    driver_available, supports_matmul, CudaBackend, CudaKv, CudaStep, CudaTensor, CudaWeight,
    GraphMode, QuantStats, GRAPH_BUCKETS, PREFILL_GRAPH_BUCKETS,
};
pub use ops::gemm::{GemmRows, WeightCacheReport};
pub use table::{table_on_device, TablePlacement, TableReport};
