//! `kestrel run`: one prompt in, streamed text out, then prompt and generation speed.

use std::io::Write;

use anyhow::{bail, Result};
use kestrel_engine::{generate, Backend, GenerateParams, Generation, SamplerParams};
use serde_json::json;

use crate::load::{load_on, ContextArgs, Loaded, OnBackend};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub ctx: ContextArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The prompt (raw text; special tokens like <|im_start|> are recognised).
    #[arg(short = 'p', long)]
    pub prompt: String,
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    pub n_predict: usize,
    /// Stop when this text appears (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Print one JSON object (ids, text, finish reason, timings) instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// With --json: the top N candidates and log-probabilities of each generated token.
    #[arg(long, default_value_t = 0)]
    pub top_logprobs: usize,
    /// Keep only the last tokens of a prompt longer than the context instead of failing.
    #[arg(long)]
    pub truncate: bool,
    /// Prompt tokens per forward pass (default: 512 on the CPU, as llama.cpp, whose arithmetic
    /// the CPU follows; 2048 on a GPU, measured fastest).
    #[arg(long)]
    pub ubatch: Option<usize>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 = greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Random seed (default: a fresh one each run).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplerParams {
        SamplerParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            penalty_last_n: 64,
            seed: self.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            }),
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let ctx = a.ctx.clone();
    load_on(&ctx, 1, Cmd(a))
}

struct Cmd(Args);

impl OnBackend for Cmd {
    type Out = ();
    fn run<B: Backend>(self, m: Loaded<B>) -> Result<()> {
        run_on(self.0, m)
    }
}

fn run_on<B: Backend>(a: Args, mut m: Loaded<B>) -> Result<()> {
    let mut ids = m.tok.encode(&a.prompt, true, true);
    let n_ctx = m.engine.config.n_ctx;
    if ids.len() + 1 > n_ctx {
        if !a.truncate {
            bail!(
                "the prompt is {} tokens but the context holds {n_ctx} (raise --ctx, or pass --truncate to keep the last tokens)",
                ids.len()
            );
        }
        ids.drain(..ids.len() + 1 - n_ctx);
    }
    let params = GenerateParams {
        max_tokens: a.n_predict.min(n_ctx - ids.len()),
        sampler: a.sampling.params(),
        stop: a.stop.clone(),
        top_logprobs: a.top_logprobs,
        ubatch: a.ubatch.unwrap_or(m.engine.backend.default_ubatch()),
    };
    let seq = m.engine.new_seq();
    let stdout = std::io::stdout();
    let streaming = !a.json;
    let g = generate(&mut m.engine, &m.tok, seq, &ids, &params, &mut |piece| {
        if streaming {
            let mut out = stdout.lock();
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
        true
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&generation_json(&g, &m.tok))?);
    } else {
        println!();
        eprintln!("{}", speed_line(&g));
    }
    Ok(())
}

pub fn speed_line(g: &Generation) -> String {
    format!(
        "prompt: {} tokens, {:.1} t/s | generation: {} tokens, {:.1} t/s",
        g.prompt_ids.len(),
        g.prompt_tps(),
        g.generated_ids.len(),
        g.gen_tps()
    )
}

fn generation_json(g: &Generation, tok: &kestrel_tokenizer::Tokenizer) -> serde_json::Value {
    let steps: Vec<_> = g
        .logprobs
        .iter()
        .map(|s| {
            json!({
                "token": s.token,
                "piece": String::from_utf8_lossy(&tok.token_bytes(s.token, true)),
                "logprob": s.logprob,
                "top": s.top.iter().map(|&(id, lp)| json!({"id": id, "logprob": lp, "prob": lp.exp()})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "prompt_ids": g.prompt_ids,
        "generated_ids": g.generated_ids,
        "text": g.text,
        "finish_reason": g.finish.as_str(),
        "steps": steps,
        "timings": {
            "prompt_n": g.prompt_ids.len(),
            "prompt_ms": g.prompt_time.as_secs_f64() * 1e3,
            "prompt_per_second": g.prompt_tps(),
            "predicted_n": g.generated_ids.len(),
            "predicted_ms": g.gen_time.as_secs_f64() * 1e3,
            "predicted_per_second": g.gen_tps(),
        },
    })
}
