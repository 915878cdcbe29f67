//! The generation loop for one sequence: prompt in chunks, then sample token by token until an
//! end-of-generation token, a stop string, or the token limit.

use std::time::{Duration, Instant};

use kestrel_tokenizer::{StreamDecoder, Tokenizer};

use crate::backend::Backend;
use crate::engine::{BatchEntry, Engine, EngineError, SeqId};
use crate::sampler::{logprob_of, top_logprobs, Sampler, SamplerParams};
use crate::stop::{find_stop, held_back};

#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampler: SamplerParams,
    pub stop: Vec<String>,
    /// How many top candidates to report per generated token (0 = none).
    pub top_logprobs: usize,
    /// Prompt tokens per forward call (bounds scratch memory).
    pub ubatch: usize,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 128,
            sampler: SamplerParams::default(),
            stop: vec![],
            top_logprobs: 0,
            ubatch: 512,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller's callback asked to stop.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug)]
pub struct StepLogprobs {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub logprobs: Vec<StepLogprobs>,
    pub prompt_time: Duration,
    pub gen_time: Duration,
}

impl Generation {
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_ids.len() as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }
    /// Decode speed: tokens after the first (the first comes from the prompt pass).
    pub fn gen_tps(&self) -> f64 {
        self.generated_ids.len().saturating_sub(1) as f64 / self.gen_time.as_secs_f64().max(1e-9)
    }
}

/// Run the prompt through `seq` (appending to what it already holds) and generate.
/// `on_text` receives each new piece of text as it becomes final; returning false stops.
pub fn generate<B: Backend>(
    engine: &mut Engine<B>,
    tok: &Tokenizer,
    seq: SeqId,
    prompt: &[u32],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation, EngineError> {
    let start_len = engine.seq_len(seq);
    let need = start_len + prompt.len() + 1;
    if need > engine.config.n_ctx {
        return Err(EngineError::ContextFull {
            need,
            limit: engine.config.n_ctx,
        });
    }
    let mut sampler = Sampler::new(params.sampler.clone());
    for &t in prompt {
        sampler.accept(t);
    }

    // Greedy without penalties or logprobs needs only each step's argmax: ask the engine for
    // that (4 bytes per step from a GPU) instead of the logits.
    let argmax_only = params.top_logprobs == 0 && params.sampler.is_plain_greedy();
    let t0 = Instant::now();
    let mut logits = Vec::new();
    let mut picked: Option<u32> = None;
    let ubatch = params.ubatch.max(1);
    for (ci, chunk) in prompt.chunks(ubatch).enumerate() {
        let last_chunk = (ci + 1) * ubatch >= prompt.len();
        let entries = BatchEntry::run(seq, chunk, last_chunk);
        if argmax_only {
            if let Some(t) = engine.step_argmax(&entries)?.pop() {
                picked = Some(t);
            }
        } else if let Some(l) = engine.step(&entries)?.pop() {
            logits = l;
        }
    }
    let prompt_time = t0.elapsed();

    let t1 = Instant::now();
    let mut out = Generation {
        prompt_ids: prompt.to_vec(),
        generated_ids: vec![],
        text: String::new(),
        finish: FinishReason::Length,
        logprobs: vec![],
        prompt_time,
        gen_time: Duration::ZERO,
    };
    let mut dec = StreamDecoder::new(tok, false);
    let mut pending = String::new();
    let max_stop = params.stop.iter().map(String::len).max().unwrap_or(0);
    while out.generated_ids.len() < params.max_tokens && (!logits.is_empty() || picked.is_some()) {
        let token = match picked.take() {
            Some(t) => t,
            None => sampler.sample(&logits),
        };
        sampler.accept(token);
        if params.top_logprobs > 0 {
            let top = top_logprobs(&logits, params.top_logprobs);
            let lp = logprob_of(&logits, token);
            out.logprobs.push(StepLogprobs {
                token,
                logprob: lp,
                top,
            });
        }
        if tok.is_eog(token) {
            out.finish = FinishReason::Stop;
            break;
        }
        out.generated_ids.push(token);
        pending.push_str(&dec.push(token));

        if let Some(at) = find_stop(&pending, &params.stop) {
            pending.truncate(at);
            let n = pending.len();
            emit(&mut out.text, &mut pending, n, on_text);
            out.finish = FinishReason::Stop;
            break;
        }
        // Hold back a tail that could still become a stop string.
        let keep = if max_stop > 0 {
            held_back(&pending, &params.stop)
        } else {
            0
        };
        let n = pending.len() - keep;
        if !emit(&mut out.text, &mut pending, n, on_text) {
            out.finish = FinishReason::Cancelled;
            break;
        }
        if out.generated_ids.len() >= params.max_tokens {
            break;
        }
        let entry = [BatchEntry::decode(seq, token)];
        if argmax_only {
            picked = engine.step_argmax(&entry)?.pop();
        } else {
            logits = engine.step(&entry)?.pop().unwrap_or_default();
        }
    }
    if out.finish != FinishReason::Cancelled {
        pending.push_str(&dec.finish());
        if out.finish == FinishReason::Length {
            if let Some(at) = find_stop(&pending, &params.stop) {
                pending.truncate(at);
                out.finish = FinishReason::Stop;
            }
        }
        let n = pending.len();
        emit(&mut out.text, &mut pending, n, on_text);
    }
    out.gen_time = t1.elapsed();
    Ok(out)
}

/// Move the first `n` bytes of `pending` to `text` and the callback.
fn emit(
    text: &mut String,
    pending: &mut String,
    n: usize,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> bool {
    if n == 0 {
        return true;
    }
    let piece: String = pending.drain(..n).collect();
    text.push_str(&piece);
    on_text(&piece)
}
