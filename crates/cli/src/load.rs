//! Opening a model for generation: resolve the name, parse the GGUF, build the spec and the
//! tokenizer, and upload the weights with a progress bar.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kestrel_cpu::CpuBackend;
use kestrel_cuda::{CudaBackend, TablePlacement};
use kestrel_engine::{Backend, Engine, EngineConfig};
use kestrel_gguf::GgufFile;
use kestrel_tokenizer::Tokenizer;

use crate::models::resolve_model;

/// Context options shared by the generating commands.
#[derive(clap::Args, Debug, Clone)]
pub struct ContextArgs {
    /// Model: a name from `kestrel pull --list` or a path to a .gguf file (default: the default model).
    #[arg(short = 'm', long)]
    pub model: Option<String>,
    /// Context length per sequence (default: the model's, capped at 4096).
    #[arg(short = 'c', long = "ctx")]
    pub ctx: Option<usize>,
    /// Where the model runs: auto (the first CUDA GPU if one works, else the CPU), cuda or cpu.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// On a GPU: keep a bf16 copy of the layer weights for prompt processing and large batches
    /// (auto: as much as free memory allows after the KV cache and a reserve; off: dequantize
    /// per call).
    #[arg(long, value_enum, default_value_t = WeightCache::Auto)]
    pub weight_cache: WeightCache,
    /// On a GPU, Gemma 4's per-layer-embedding table (several GB, a few rows read per step):
    /// auto keeps it in GPU memory when it fits after the other weights, the KV cache and a
    /// reserve, else in pinned host memory the GPU reads the step's rows from over PCIe.
    #[arg(long, value_enum, default_value_t = Ple::Auto)]
    pub ple: Ple,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ple {
    #[default]
    Auto,
    Device,
    Host,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightCache {
    #[default]
    Auto,
    Off,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Auto,
    Cuda,
    Cpu,
}

/// What a command does with a loaded model, for any backend: `load_on` picks the backend at run
/// time and calls it, so each command has one code path.
pub trait OnBackend {
    type Out;
    fn run<B: Backend>(self, m: Loaded<B>) -> Result<Self::Out>;
}

/// Load the model on the device `args.device` names and hand it to `f`. `auto` uses GPU 0 when
/// the CUDA backend starts (driver, GPU and NVRTC present), else the CPU with a one-line note;
/// `cuda` fails when it does not.
pub fn load_on<F: OnBackend>(args: &ContextArgs, n_seqs: usize, f: F) -> Result<F::Out> {
    match gpu_for(args.device)? {
        Some(gpu) => f.run(load_gpu(gpu, args, n_seqs)?),
        None => f.run(load_cpu(args, n_seqs)?),
    }
}

/// The GPU backend `device` asks for: `cuda` fails when it does not start, `auto` falls back
/// to the CPU (None) with a one-line note, `cpu` is None.
pub fn gpu_for(device: Device) -> Result<Option<CudaBackend>> {
    match device {
        Device::Cpu => Ok(None),
        Device::Cuda => Ok(Some(CudaBackend::new(0).context("--device cuda")?)),
        Device::Auto => match CudaBackend::new(0) {
            Ok(gpu) => Ok(Some(gpu)),
            Err(e) => {
                let why = format!("{e:#}");
                eprintln!(
                    "kestrel: running on the CPU ({})",
                    why.lines().next().unwrap_or("CUDA unavailable")
                );
                Ok(None)
            }
        },
    }
}

pub struct Loaded<B: Backend> {
    pub engine: Engine<B>,
    pub tok: Tokenizer,
    pub path: PathBuf,
    pub file: Arc<GgufFile>,
}

/// `load` on the GPU (reporting where a per-layer-embedding table went, `--ple`), then the bf16
/// weight cache (`--weight-cache`): the layer matrices, then, if memory remains, the output head
/// (the GEMM path computes batched decode's logits), each reported in one line.
pub fn load_gpu(
    gpu: CudaBackend,
    args: &ContextArgs,
    n_seqs: usize,
) -> Result<Loaded<CudaBackend>> {
    gpu.set_table_placement(match args.ple {
        Ple::Auto => TablePlacement::Auto,
        Ple::Device => TablePlacement::Device,
        Ple::Host => TablePlacement::Host,
    });
    let m = load(gpu, args, n_seqs)?;
    for t in m.engine.backend.table_reports() {
        eprintln!("kestrel: {t}");
    }
    if args.weight_cache == WeightCache::Auto {
        let b = &m.engine.backend;
        let w = m.engine.weights();
        let rep = b.cache_weights(&w.layer_matrices(), b.default_cache_reserve());
        eprintln!("kestrel: {rep}");
        if rep.skipped.is_none() {
            let head = b.cache_weights(&[w.output()], b.default_cache_reserve());
            if head.cached > 0 {
                eprintln!(
                    "kestrel: bf16 output head cached too ({:.2} GiB)",
                    head.cached_bytes as f64 / (1u64 << 30) as f64
                );
            }
        }
    }
    Ok(m)
}

pub fn load_cpu(args: &ContextArgs, n_seqs: usize) -> Result<Loaded<CpuBackend>> {
    load(CpuBackend::new(), args, n_seqs)
}

pub fn load<B: Backend>(backend: B, args: &ContextArgs, n_seqs: usize) -> Result<Loaded<B>> {
    let path = resolve_model(args.model.as_deref())?;
    let file =
        Arc::new(GgufFile::open(&path).with_context(|| format!("loading {}", path.display()))?);
    let spec = kestrel_model::spec_from_gguf(&file)
        .with_context(|| format!("loading {}", path.display()))?;
    let tok = Tokenizer::from_gguf(&file)
        .with_context(|| format!("reading the tokenizer of {}", path.display()))?;
    let n_ctx = args.ctx.unwrap_or(spec.n_ctx_train.min(4096)).max(16);
    let config = EngineConfig {
        n_ctx,
        kv_tokens: n_ctx * n_seqs.max(1),
    };
    let bar = ProgressBar::new(file.data_bytes());
    bar.set_style(
        ProgressStyle::with_template("loading {msg} [{bar:30}] {bytes}/{total_bytes}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let engine = Engine::load(backend, spec, &file, config, &mut |done, _| {
        bar.set_position(done)
    })
    .with_context(|| format!("loading {}", path.display()))?;
    bar.finish_and_clear();
    Ok(Loaded {
        engine,
        tok,
        path,
        file,
    })
}
