//! Continuous batching: many requests share one [`Engine`], and every step runs tokens of any
//! number of them through one `Engine::step` call.
//!
//! The policy follows vLLM V1's scheduler: a request is only "how many of its tokens are in the
//! KV cache" (`computed`) against "how many tokens it has" (prompt plus generated). Each step,
//! under a token budget,
//! 1. every running request that is decoding gets its one token;
//! 2. running requests still in their prompt get chunks of it (chunked prefill), in arrival order;
//! 3. waiting requests are admitted, in arrival order, while the running set has room and the
//!    free KV blocks cover their whole remaining prompt; each gets a first chunk.
//!
//! When a running request needs a block and none is free, the most recently admitted running
//! request is preempted by recompute: its blocks are freed and it goes back to the front of the
//! queue with its prompt and generated tokens, to be prefilled again later. Its sampler and text
//! decoder keep their state, so the output is the same as if it had never been preempted.
//!
//! Prefix reuse: a request's full prompt blocks are registered in the engine's block pool by
//! the hash of everything up to their end once computed, and a request admitted later starts
//! from the longest run of registered blocks its prompt matches (at least one prompt token is
//! always computed, for the logits). Only blocks whose tokens the backend computes with the
//! same bits in any chunk (`Backend::chunk_invariant`) are registered or reused, so sharing
//! never changes an answer.
//!
//! Each step returns per-request [`Event`]s: text deltas (with log-probabilities when asked),
//! then one `Finished` (stop or length, with token counts) or `Error`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use kestrel_tokenizer::{StreamDecoder, Tokenizer};

use crate::backend::{Backend, Chunk, KV_BLOCK};
use crate::engine::{BatchEntry, Engine, SeqId};
use crate::generate::{FinishReason, StepLogprobs};
use crate::kv::prefix_hashes;
use crate::sampler::{logprob_of, top_logprobs, Sampler, SamplerParams};
use crate::stop::{find_stop, held_back};

/// The caller's name for a request.
pub type RequestId = u64;

#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    /// Most requests decoding or prefilling at once; the rest wait.
    pub max_running: usize,
    /// Most tokens in one step (decodes plus prefill chunks); raised to `max_running` if lower.
    pub token_budget: usize,
    /// The prompt chunk size the numbers follow: each prompt token is computed as part of its
    /// `ubatch`-token chunk ([`Chunk::of_prompt`]) however the token budget splits the prompt
    /// over steps, so a request's output equals `generate` with the same `ubatch` alone.
    pub ubatch: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_running: 4,
            token_budget: 512,
            ubatch: 512,
        }
    }
}

/// What to generate for one request.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    /// Generated tokens at most (end-of-generation tokens not counted); also capped by the
    /// context: `n_ctx - prompt.len()`.
    pub max_tokens: usize,
    pub sampler: SamplerParams,
    /// Generation stops before the first of these strings; the string itself is not returned.
    pub stop: Vec<String>,
    /// Report the log-probability of each generated token.
    pub logprobs: bool,
    /// With `logprobs`: also the N most likely candidates at each step.
    pub top_logprobs: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// New text (possibly empty while a possible stop string or a partial character is held
    /// back), and the tokens sampled since the last delta with their log-probabilities when
    /// requested.
    Delta {
        text: String,
        tokens: Vec<u32>,
        logprobs: Vec<StepLogprobs>,
    },
    /// The last event of a request that ended normally.
    Finished { reason: FinishReason, usage: Usage },
    /// The last event of a request that failed.
    Error { message: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt is {prompt} tokens; with one generated token that exceeds the context of {n_ctx}")]
    PromptTooLong { prompt: usize, n_ctx: usize },
    #[error("a request with id {0} already exists")]
    DuplicateId(RequestId),
    #[error("max_tokens must be at least 1")]
    NoTokens,
}

/// What one step did.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepStats {
    /// Prompt (or recomputed) tokens run.
    pub prefill_tokens: usize,
    /// Decode tokens run (one per decoding request).
    pub decode_tokens: usize,
    /// Requests preempted to make room.
    pub preempted: usize,
    /// Prompt tokens found in the cache (prefix reuse) by requests admitted this step.
    pub prefix_hit_tokens: usize,
    /// Wall time of the forward pass and sampling.
    pub elapsed: Duration,
}

pub struct StepOutput {
    pub events: Vec<(RequestId, Event)>,
    pub stats: StepStats,
}

/// A request the scheduler holds, waiting or running.
struct Active<'t> {
    id: RequestId,
    seq: Option<SeqId>,
    /// Prompt then generated tokens; the last generated one is not yet in the cache.
    tokens: Vec<u32>,
    n_prompt: usize,
    /// Tokens of `tokens` in the KV cache.
    computed: usize,
    /// Prefix hashes of the leading full prompt blocks that may be shared
    /// (`kv::prefix_hashes`, cut at the first block with a chunk-dependent token).
    hashes: Vec<u64>,
    /// Blocks of `hashes` already registered in (or taken from) the pool.
    registered: usize,
    max_tokens: usize,
    sampler: Sampler,
    stop: Vec<String>,
    max_stop: usize,
    logprobs: bool,
    top_logprobs: usize,
    decoder: StreamDecoder<'t>,
    /// Decoded text not yet released (it may still become a stop string).
    pending: String,
}

impl Active<'_> {
    fn n_generated(&self) -> usize {
        self.tokens.len() - self.n_prompt
    }

    fn remaining(&self) -> usize {
        self.tokens.len() - self.computed
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.n_prompt,
            completion_tokens: self.n_generated(),
        }
    }
}

/// Blocks a sequence of `len` tokens holds.
fn blocks_for(len: usize) -> usize {
    len.div_ceil(KV_BLOCK)
}

pub struct Scheduler<'t, B: Backend> {
    engine: Engine<B>,
    tok: &'t Tokenizer,
    config: SchedulerConfig,
    waiting: VecDeque<Active<'t>>,
    /// In admission order; preemption takes from the back.
    running: Vec<Active<'t>>,
}

impl<'t, B: Backend> Scheduler<'t, B> {
    pub fn new(engine: Engine<B>, tok: &'t Tokenizer, config: SchedulerConfig) -> Self {
        let config = SchedulerConfig {
            max_running: config.max_running.max(1),
            token_budget: config.token_budget.max(config.max_running).max(1),
            ubatch: config.ubatch.max(1),
        };
        Scheduler {
            engine,
            tok,
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    pub fn engine(&self) -> &Engine<B> {
        &self.engine
    }

    /// Give the engine back (requests still held are dropped with their sequences).
    pub fn into_engine(mut self) -> Engine<B> {
        for r in self.running.drain(..) {
            if let Some(seq) = r.seq {
                self.engine.free_seq(seq);
            }
        }
        self.engine
    }

    pub fn config(&self) -> SchedulerConfig {
        self.config
    }

    /// Requests queued, not yet admitted (preempted ones included).
    pub fn n_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests holding a sequence in the engine.
    pub fn n_running(&self) -> usize {
        self.running.len()
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn contains(&self, id: RequestId) -> bool {
        self.running.iter().chain(&self.waiting).any(|r| r.id == id)
    }

    /// Queue a request. Its events come out of later [`Scheduler::step`] calls.
    pub fn submit(&mut self, id: RequestId, req: Request) -> Result<(), SubmitError> {
        let n_ctx = self.engine.config.n_ctx;
        if req.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if req.prompt.len() + 1 > n_ctx {
            return Err(SubmitError::PromptTooLong {
                prompt: req.prompt.len(),
                n_ctx,
            });
        }
        if req.max_tokens == 0 {
            return Err(SubmitError::NoTokens);
        }
        if self.contains(id) {
            return Err(SubmitError::DuplicateId(id));
        }
        let mut sampler = Sampler::new(req.sampler);
        for &t in &req.prompt {
            sampler.accept(t);
        }
        let max_stop = req.stop.iter().map(String::len).max().unwrap_or(0);
        let hashes = self.shareable_hashes(&req.prompt);
        self.waiting.push_back(Active {
            id,
            seq: None,
            n_prompt: req.prompt.len(),
            max_tokens: req.max_tokens.min(n_ctx - req.prompt.len()),
            tokens: req.prompt,
            computed: 0,
            hashes,
            registered: 0,
            sampler,
            stop: req.stop,
            max_stop,
            logprobs: req.logprobs,
            top_logprobs: req.top_logprobs,
            decoder: StreamDecoder::new(self.tok, false),
            pending: String::new(),
        });
        Ok(())
    }

    /// Prefix hashes of the prompt's leading full blocks whose every token the backend
    /// computes chunk-invariantly ([`Backend::chunk_invariant`]).
    fn shareable_hashes(&self, prompt: &[u32]) -> Vec<u64> {
        let b = &self.engine.backend;
        let (n, ub) = (prompt.len(), self.config.ubatch);
        let shareable = (0..n / KV_BLOCK)
            .take_while(|i| {
                (i * KV_BLOCK..(i + 1) * KV_BLOCK)
                    .all(|p| b.chunk_invariant(Chunk::of_prompt(p, n, ub)))
            })
            .count();
        let mut h = prefix_hashes(&prompt[..shareable * KV_BLOCK]);
        h.truncate(shareable);
        h
    }

    /// Drop a request (its client went away), freeing its KV blocks. No event follows.
    /// Returns whether it was there.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        if let Some(i) = self.waiting.iter().position(|r| r.id == id) {
            self.waiting.remove(i);
            return true;
        }
        if let Some(i) = self.running.iter().position(|r| r.id == id) {
            let r = self.running.remove(i);
            if let Some(seq) = r.seq {
                self.engine.free_seq(seq);
            }
            return true;
        }
        false
    }

    /// Decide this step's tokens: (index into `running`, tokens to run) pairs. Requests that
    /// can never fit get an `Error` event in `events` and are dropped.
    fn schedule(
        &mut self,
        stats: &mut StepStats,
        events: &mut Vec<(RequestId, Event)>,
    ) -> Vec<(usize, usize)> {
        let mut budget = self.config.token_budget;
        let mut free = self.engine.free_blocks();
        // (request id, tokens): ids, because preemption removes from `running`.
        let mut plan: Vec<(RequestId, usize)> = Vec::new();

        // Decodes first, then prompt chunks of running requests, each in admission order.
        for prefill_pass in [false, true] {
            let mut i = 0;
            while i < self.running.len() && budget > 0 {
                let r = &self.running[i];
                let rem = r.remaining();
                if rem == 0 || (rem > 1) != prefill_pass || plan.iter().any(|p| p.0 == r.id) {
                    i += 1;
                    continue;
                }
                let n = rem.min(budget);
                let need = blocks_for(r.computed + n) - blocks_for(r.computed);
                if need <= free {
                    free -= need;
                    budget -= n;
                    plan.push((r.id, n));
                    i += 1;
                    continue;
                }
                // Out of blocks: preempt the most recently admitted request not yet planned.
                // Every unplanned request before `i` is skipped by this pass, so the victim
                // is `i` itself or one after it, and indices before it stay valid.
                let v = (i..self.running.len())
                    .rev()
                    .find(|&j| !plan.iter().any(|p| p.0 == self.running[j].id))
                    .expect("request i is unplanned");
                if v == i && self.running.len() == 1 {
                    // Alone and still too big: the pool is smaller than this sequence.
                    let r = self.running.remove(i);
                    if let Some(seq) = r.seq {
                        self.engine.free_seq(seq);
                    }
                    events.push((
                        r.id,
                        Event::Error {
                            message: "the KV cache is too small for this request".into(),
                        },
                    ));
                    break;
                }
                let mut victim = self.running.remove(v);
                if let Some(seq) = victim.seq.take() {
                    free += blocks_for(victim.computed);
                    self.engine.free_seq(seq);
                }
                victim.computed = 0;
                victim.registered = 0;
                self.waiting.push_front(victim);
                stats.preempted += 1;
                if v == i {
                    break;
                }
            }
        }

        // Admit waiting requests (FCFS) when nothing had to be preempted this step and the
        // free blocks hold the whole remaining prompt.
        if stats.preempted == 0 {
            // Blocks the running requests' unfinished prompts will still take.
            let owed: usize = self
                .running
                .iter()
                .map(|r| {
                    let planned = plan.iter().find(|p| p.0 == r.id).map_or(0, |p| p.1);
                    blocks_for(r.tokens.len()) - blocks_for(r.computed + planned)
                })
                .sum();
            let mut free = free.saturating_sub(owed);
            while budget > 0 && self.running.len() < self.config.max_running {
                let Some(r) = self.waiting.front() else { break };
                let rem = r.remaining();
                // Cached prompt blocks, leaving at least one prompt token to compute.
                let max_hit = r.hashes.len().min((r.n_prompt - 1) / KV_BLOCK);
                let (hits, hits_free) = self.engine.find_prefix(&r.hashes[..max_hit]);
                let need = blocks_for(r.tokens.len()) - hits.len() + hits_free;
                if need > free {
                    if self.running.is_empty()
                        && plan.is_empty()
                        && blocks_for(rem) > self.engine.total_blocks()
                    {
                        let r = self.waiting.pop_front().expect("front exists");
                        events.push((
                            r.id,
                            Event::Error {
                                message: "the KV cache is too small for this request".into(),
                            },
                        ));
                        continue;
                    }
                    break;
                }
                let mut r = self.waiting.pop_front().expect("front exists");
                let seq = self.engine.new_seq();
                self.engine.attach_prefix(seq, &hits);
                r.seq = Some(seq);
                r.computed = hits.len() * KV_BLOCK;
                r.registered = hits.len();
                stats.prefix_hit_tokens += r.computed;
                let n = r.remaining().min(budget);
                free -= need;
                budget -= n;
                plan.push((r.id, n));
                self.running.push(r);
            }
        }

        plan.into_iter()
            .map(|(id, n)| {
                let i = self
                    .running
                    .iter()
                    .position(|r| r.id == id)
                    .expect("planned requests run");
                (i, n)
            })
            .collect()
    }

    /// Run one step: schedule, one forward pass over all scheduled tokens, sample the requests
    /// whose tokens are all in the cache. Does nothing (and returns no events) without work.
    pub fn step(&mut self) -> StepOutput {
        let t0 = Instant::now();
        let mut stats = StepStats::default();
        let mut events = Vec::new();
        let plan = self.schedule(&mut stats, &mut events);
        if plan.is_empty() {
            stats.elapsed = t0.elapsed();
            return StepOutput { events, stats };
        }

        let mut entries = Vec::new();
        let ubatch = self.config.ubatch;
        for &(i, n) in &plan {
            let r = &self.running[i];
            let seq = r.seq.expect("running requests hold a sequence");
            let start = r.computed;
            let last = start + n == r.tokens.len();
            entries.extend(
                r.tokens[start..start + n]
                    .iter()
                    .enumerate()
                    .map(|(j, &token)| BatchEntry {
                        seq,
                        token,
                        logits: last && j + 1 == n,
                        // Recomputed generated tokens are decode tokens again.
                        chunk: Some(Chunk::of_prompt(start + j, r.n_prompt, ubatch)),
                    }),
            );
            if n == 1 && start >= r.n_prompt {
                stats.decode_tokens += 1;
            } else {
                stats.prefill_tokens += n;
            }
        }

        // When every request sampled this step is greedy without penalties or logprobs, the
        // engine returns only the argmax of each logits row (4 bytes a row from a GPU).
        let argmax_only = plan.iter().all(|&(i, n)| {
            let r = &self.running[i];
            r.computed + n < r.tokens.len() || (!r.logprobs && r.sampler.params.is_plain_greedy())
        });
        let result = if argmax_only {
            self.engine.step_argmax(&entries).map(Picks::Tokens)
        } else {
            self.engine.step(&entries).map(Picks::Logits)
        };
        let mut done: Vec<usize> = Vec::new();
        match result {
            Err(e) => {
                // Nothing changed in the engine; the scheduled requests cannot go on.
                for &(i, _) in &plan {
                    events.push((
                        self.running[i].id,
                        Event::Error {
                            message: format!("engine error: {e}"),
                        },
                    ));
                    done.push(i);
                }
            }
            Ok(picks) => {
                let (mut rows, mut tokens) = match picks {
                    Picks::Logits(l) => (l.into_iter(), Vec::new().into_iter()),
                    Picks::Tokens(t) => (Vec::new().into_iter(), t.into_iter()),
                };
                for &(i, n) in &plan {
                    let r = &mut self.running[i];
                    r.computed += n;
                    let full = (r.computed / KV_BLOCK).min(r.hashes.len());
                    if full > r.registered {
                        let seq = r.seq.expect("running requests hold a sequence");
                        self.engine
                            .register_prefix(seq, &r.hashes, r.registered..full);
                        r.registered = full;
                    }
                    if r.computed < r.tokens.len() {
                        continue;
                    }
                    let l = rows.next();
                    let pick = match &l {
                        Some(l) => Pick::Logits(l),
                        None => Pick::Token(tokens.next().expect("one row per finished chunk")),
                    };
                    if let Some(ev) = sample_into(r, self.tok, pick, &mut events) {
                        events.push((r.id, ev));
                        done.push(i);
                    }
                }
            }
        }
        done.sort_unstable();
        for &i in done.iter().rev() {
            let r = self.running.remove(i);
            if let Some(seq) = r.seq {
                self.engine.free_seq(seq);
            }
        }
        stats.elapsed = t0.elapsed();
        StepOutput { events, stats }
    }
}

/// A step's result: the logits rows of the finished chunks, or only their greedy tokens.
enum Picks {
    Logits(Vec<Vec<f32>>),
    Tokens(Vec<u32>),
}

/// One request's row of a step's result.
enum Pick<'a> {
    Logits(&'a [f32]),
    /// The greedy token, for a request that needs nothing else from its logits.
    Token(u32),
}

/// Sample the next token of `r` from its logits (or take the greedy pick), push its text delta
/// to `events`, and return the final event if the request is done (the same rules as
/// `generate`).
fn sample_into(
    r: &mut Active,
    tok: &Tokenizer,
    pick: Pick,
    events: &mut Vec<(RequestId, Event)>,
) -> Option<Event> {
    let (token, logits) = match pick {
        Pick::Logits(l) => (r.sampler.sample(l), l),
        Pick::Token(t) => (t, &[][..]),
    };
    r.sampler.accept(token);
    if tok.is_eog(token) {
        r.pending.push_str(&r.decoder.finish());
        let text = std::mem::take(&mut r.pending);
        if !text.is_empty() {
            events.push((
                r.id,
                Event::Delta {
                    text,
                    tokens: vec![],
                    logprobs: vec![],
                },
            ));
        }
        return Some(Event::Finished {
            reason: FinishReason::Stop,
            usage: r.usage(),
        });
    }
    let logprobs = if r.logprobs {
        vec![StepLogprobs {
            token,
            logprob: logprob_of(logits, token),
            top: top_logprobs(logits, r.top_logprobs),
        }]
    } else {
        vec![]
    };
    r.tokens.push(token);
    r.pending.push_str(&r.decoder.push(token));

    let mut finish = None;
    if let Some(at) = find_stop(&r.pending, &r.stop) {
        r.pending.truncate(at);
        finish = Some(FinishReason::Stop);
    } else if r.n_generated() >= r.max_tokens {
        r.pending.push_str(&r.decoder.finish());
        finish = Some(FinishReason::Length);
        if let Some(at) = find_stop(&r.pending, &r.stop) {
            r.pending.truncate(at);
            finish = Some(FinishReason::Stop);
        }
    }
    // Hold back a tail that could still become a stop string.
    let keep = if finish.is_none() && r.max_stop > 0 {
        held_back(&r.pending, &r.stop)
    } else {
        0
    };
    let text: String = r.pending.drain(..r.pending.len() - keep).collect();
    events.push((
        r.id,
        Event::Delta {
            text,
            tokens: vec![token],
            logprobs,
        },
    ));
    finish.map(|reason| Event::Finished {
        reason,
        usage: r.usage(),
    })
}
