//! `kestrel synth`: write a GGUF v3 model with a preset's real shapes, seeded random weights and
//! a llama.cpp-like quant mix, for benchmarks against llama.cpp on the same file (see
//! shared/PEERS.md). Tensor data is generated in parallel per tensor and streamed to disk, so
//! only one tensor is ever in memory.

mod fill;
mod plan;
mod presets;
mod vocab;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kestrel_gguf::{GgmlType, GgufWriter};

pub use presets::Preset;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model whose shapes the file gets.
    #[arg(long, value_enum)]
    pub preset: Preset,
    /// Where to write the GGUF file.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the random weights: the same seed gives the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    pub force: bool,
    /// Keep only the first N layers (small files for tests).
    #[arg(long, hide = true)]
    pub layers: Option<usize>,
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg = presets::config(a.preset);
    if let Some(n) = a.layers {
        cfg = cfg.with_layers(n)?;
    }
    if a.out.exists() && !a.force {
        bail!("{} exists (pass --force to overwrite it)", a.out.display());
    }
    let meta = plan::metadata(&cfg, a.seed);
    let tensors = plan::tensors(&cfg);
    let size = plan::file_size(&meta, &tensors);
    eprintln!(
        "synth {}: {} layers, d_model {}, vocab {}, {} tensors, {}",
        cfg.preset.name(),
        cfg.n_layer,
        cfg.d_model,
        cfg.n_vocab,
        tensors.len(),
        human(size)
    );

    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template(
            "writing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add_meta(&k, v);
    }
    let mut by_type: BTreeMap<GgmlType, (usize, u64)> = BTreeMap::new();
    for t in &tensors {
        let e = by_type.entry(t.ty).or_default();
        e.0 += 1;
        e.1 += t.bytes();
        let (ty, init, name) = (t.ty, t.init, t.name.clone());
        let seed = fill::tensor_seed(a.seed, &t.name);
        let bar = bar.clone();
        w.add_tensor_lazy(
            &t.name,
            &t.shape,
            t.ty,
            Box::new(move |buf: &mut [u8]| {
                bar.set_message(name);
                fill::fill(ty, init, seed, buf, threads);
            }),
        )?;
    }

    let start = Instant::now();
    let partial = partial_path(&a.out);
    let result = write(w, &partial, &bar);
    bar.finish_and_clear();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &a.out)
        .with_context(|| format!("renaming {} to {}", partial.display(), a.out.display()))?;
    let secs = start.elapsed().as_secs_f64();
    let written = std::fs::metadata(&a.out)?.len();
    if written != size {
        bail!("wrote {written} bytes, planned {size}");
    }

    let mut out = io::stdout().lock();
    let data: u64 = by_type.values().map(|e| e.1).sum();
    writeln!(
        out,
        "wrote {} in {secs:.1} s: {written} bytes ({}); tensors {} (llama-bench's \"size\")",
        a.out.display(),
        human(written),
        human(data)
    )?;
    for (ty, (n, bytes)) in by_type.iter().rev() {
        writeln!(out, "  {:<5} {n:>4} tensors  {}", ty.name(), human(*bytes))?;
    }
    Ok(())
}

/// `FILE.partial` next to FILE: the file appears under its name only when complete.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

fn write(w: GgufWriter, path: &Path, bar: &ProgressBar) -> Result<()> {
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = Counting {
        inner: BufWriter::with_capacity(8 << 20, f),
        bar: bar.clone(),
    };
    w.write(&mut out)
        .with_context(|| format!("writing {}", path.display()))?;
    out.inner
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Moves the progress bar as bytes go out, in slices small enough for it to move smoothly.
struct Counting<W> {
    inner: W,
    bar: ProgressBar,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(&buf[..buf.len().min(16 << 20)])?;
        self.bar.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// 456.3 MiB, 4.68 GiB.
fn human(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    const GIB: f64 = (1u64 << 30) as f64;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else {
        format!("{:.1} MiB", b / MIB)
    }
}
