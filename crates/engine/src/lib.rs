//! The engine: the `Backend` trait, the single generic `forward`, paged KV bookkeeping, the
//! sampler and the generation loop. Knows nothing of CUDA or HTTP.

pub mod backend;
pub mod engine;
pub mod forward;
pub mod generate;
pub mod kv;
pub mod sampler;
pub mod scheduler;
pub mod stop;
pub mod weights;

pub use backend::{AttnGeom, Backend, Chunk, GraphBucket, StepInfo, WeightRef, KV_BLOCK};
pub use engine::{BatchEntry, Engine, EngineConfig, EngineError, SeqId};
pub use generate::{generate, FinishReason, GenerateParams, Generation, StepLogprobs};
pub use sampler::{Sampler, SamplerParams};
pub use scheduler::{
    Event, Request, RequestId, Scheduler, SchedulerConfig, StepOutput, StepStats, SubmitError,
    Usage,
};
