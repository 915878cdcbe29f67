//! `kestrel serve`: the OpenAI-compatible HTTP server (continuous batching over one engine).

use std::time::Duration;

use anyhow::{Context, Result};
use kestrel_cuda::CudaBackend;
use kestrel_server::ServerConfig;

use crate::load::{gpu_for, load_cpu, load_gpu, ContextArgs, Device};
use crate::models::resolve_model;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub ctx: ContextArgs,
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on the API endpoints.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Requests generating at once; the KV cache holds this many full contexts.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Requests that may wait for a slot before new ones are refused with 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Tokens per engine step (decodes plus chunks of prompts).
    #[arg(long, default_value_t = 512)]
    pub batch_tokens: usize,
    /// Prompt chunk size the arithmetic follows: a request's answer equals `kestrel run` with
    /// the same `--ubatch`, however prompts share steps.
    #[arg(long, default_value_t = 512)]
    pub ubatch: usize,
    /// Seconds a request may take before it is cancelled.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub body_limit: usize,
    /// Model name reported by /v1/models (default: the model's name or file stem).
    #[arg(long)]
    pub model_id: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    let path = resolve_model(a.ctx.model.as_deref())?;
    let model_id = a.model_id.clone().unwrap_or_else(|| match &a.ctx.model {
        Some(m) if !std::path::Path::new(m).is_file() => m.clone(),
        _ => path
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned()),
    });
    // The engine thread builds its own backend (a CUDA context belongs to the thread that
    // made it): probe the device here only to pick the backend type and report failures early.
    let on_gpu = gpu_for(a.ctx.device)?.is_some();
    let ctx = ContextArgs {
        model: Some(path.to_string_lossy().into_owned()),
        ctx: a.ctx.ctx,
        device: if on_gpu { Device::Cuda } else { Device::Cpu },
        weight_cache: a.ctx.weight_cache,
        ple: a.ctx.ple,
    };
    let parallel = a.parallel.max(1);
    let config = ServerConfig {
        host: a.host,
        port: a.port,
        api_key: a.api_key.filter(|k| !k.is_empty()),
        parallel,
        max_queue: a.queue,
        token_budget: a.batch_tokens,
        ubatch: a.ubatch,
        body_limit: a.body_limit,
        timeout: Duration::from_secs(a.timeout.max(1)),
        model_id: model_id.clone(),
    };
    let auth = if config.api_key.is_some() {
        "API key required"
    } else {
        "no API key"
    };
    let server = if on_gpu {
        kestrel_server::start(config, move || {
            let m = load_gpu(
                CudaBackend::new(0).context("--device cuda")?,
                &ctx,
                parallel,
            )?;
            Ok((m.engine, m.tok))
        })?
    } else {
        kestrel_server::start(config, move || {
            let m = load_cpu(&ctx, parallel)?;
            Ok((m.engine, m.tok))
        })?
    };
    eprintln!(
        "kestrel serve: model {model_id} ({}), listening on {} ({auth}; {parallel} parallel) — chat page at {}/, API at {}/v1",
        path.display(),
        server.url(),
        server.url(),
        server.url()
    );
    server.wait()
}
