//! Opening a model for generation: resolve the name, parse the GGUF, build the spec and the
//! tokenizer, and upload the weights with a progress bar.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kestrel_cpu::CpuBackend;
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
}

pub struct Loaded<B: Backend> {
    pub engine: Engine<B>,
    pub tok: Tokenizer,
    pub path: PathBuf,
    pub file: Arc<GgufFile>,
}

pub fn load_cpu(args: &ContextArgs, n_seqs: usize) -> Result<Loaded<CpuBackend>> {
    load(CpuBackend::new(), args, n_seqs)
}

pub fn load<B: Backend>(backend: B, args: &ContextArgs, n_seqs: usize) -> Result<Loaded<B>> {
    let path = resolve_model(args.model.as_deref())?;
    let file = Arc::new(GgufFile::open(&path).with_context(|| format!("loading {}", path.display()))?);
    let spec = kestrel_model::spec_from_gguf(&file).with_context(|| format!("loading {}", path.display()))?;
    let tok = Tokenizer::from_gguf(&file).with_context(|| format!("reading the tokenizer of {}", path.display()))?;
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
    let engine = Engine::load(backend, spec, &file, config, &mut |done, _| bar.set_position(done))
        .with_context(|| format!("loading {}", path.display()))?;
    bar.finish_and_clear();
    Ok(Loaded {
        engine,
        tok,
        path,
        file,
    })
}
