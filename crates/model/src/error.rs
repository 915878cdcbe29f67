use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("unknown architecture {0:?} (supported: llama, qwen2, qwen3, gemma3, gemma4)")]
    UnknownArch(String),
    #[error("{0} is not supported yet")]
    Unsupported(String),
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    WrongShape {
        name: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("tensor {name:?} has unsupported type {ty}")]
    WrongType { name: String, ty: String },
    #[error("bad hyperparameter {key:?}: {reason}")]
    BadParam { key: String, reason: String },
    #[error(transparent)]
    Gguf(#[from] kestrel_gguf::GgufError),
}

pub type Result<T> = std::result::Result<T, ModelError>;
