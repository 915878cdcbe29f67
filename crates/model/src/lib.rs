//! GGUF metadata → `ModelSpec`: the data that drives the generic decoder. One small file per
//! architecture in `arch/`; nothing here knows how ops run.

pub mod arch;
pub mod error;
pub mod hparams;
pub mod spec;
pub mod tensors;

pub use arch::spec_from_gguf;
pub use error::{ModelError, Result};
pub use spec::{Arch, FfnKind, LayerSpec, ModelSpec, PleSpec, RopeSpec};
pub use tensors::{LayerTensors, ModelTensors, PleTensors};
