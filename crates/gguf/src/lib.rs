//! GGUF: reading (mmap, zero-copy, validated), writing (v3), the ggml type table and the
//! scalar reference (de)quantizers that every CPU and CUDA kernel is tested against.

pub mod error;
pub mod meta;
pub mod quant;
pub mod reader;
pub mod types;
pub mod writer;

pub use error::{GgufError, Result};
pub use meta::{MetaType, MetaValue};
pub use reader::{GgufFile, TensorInfo};
pub use types::{GgmlType, QK_K};
pub use writer::GgufWriter;
