use thiserror::Error;

/// Everything that can be wrong with a GGUF file. Messages name the key, tensor or offset.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file (magic {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (supported: 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("file truncated at offset {offset} while reading {what}")]
    Truncated { offset: u64, what: String },
    #[error("invalid metadata at offset {offset} (key {key:?}): {reason}")]
    BadMetadata {
        offset: u64,
        key: String,
        reason: String,
    },
    #[error("invalid tensor {name:?}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    #[error("cannot write GGUF: {0}")]
    Write(String),
}

pub type Result<T> = std::result::Result<T, GgufError>;
