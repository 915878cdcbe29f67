//! A loaded model with its KV pool: sequences come and go, and every step — a prompt, one
//! decode token, or tokens of many sequences at once — is one `step` call into `forward`.

use std::sync::Arc;

use kestrel_gguf::GgufFile;
use kestrel_model::ModelSpec;

use crate::backend::{Backend, Chunk, GraphBucket, StepInfo, KV_BLOCK};
use crate::forward::forward;
use crate::kv::{BlockPool, SeqCache};
use crate::weights::{self, Weights};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the context is full: sequence needs {need} tokens, the limit is {limit}")]
    ContextFull { need: usize, limit: usize },
    #[error("out of KV cache blocks ({free} free, {need} needed)")]
    OutOfBlocks { need: usize, free: usize },
    #[error("unknown sequence {0}")]
    UnknownSeq(usize),
    #[error("token id {token} is outside the vocabulary ({n_vocab})")]
    BadToken { token: u32, n_vocab: usize },
}

pub type SeqId = usize;

#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// Most tokens one sequence may hold.
    pub n_ctx: usize,
    /// Tokens the whole KV pool holds (all sequences together).
    pub kv_tokens: usize,
}

/// One token of a step.
#[derive(Clone, Copy, Debug)]
pub struct BatchEntry {
    pub seq: SeqId,
    pub token: u32,
    pub logits: bool,
    /// The chunk this token is computed as part of; `None`: its sequence's run of consecutive
    /// entries in this step.
    pub chunk: Option<Chunk>,
}

impl BatchEntry {
    /// One decode token of `seq`, wanting logits.
    pub fn decode(seq: SeqId, token: u32) -> BatchEntry {
        BatchEntry {
            seq,
            token,
            logits: true,
            chunk: None,
        }
    }

    /// The entries of `tokens` of one sequence run together, the last one wanting logits if
    /// `last_logits`.
    pub fn run(seq: SeqId, tokens: &[u32], last_logits: bool) -> Vec<BatchEntry> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, &token)| BatchEntry {
                seq,
                token,
                logits: last_logits && i + 1 == tokens.len(),
                chunk: None,
            })
            .collect()
    }
}

pub struct Engine<B: Backend> {
    pub backend: B,
    pub spec: ModelSpec,
    pub config: EngineConfig,
    weights: Weights<B::Weight>,
    /// Per layer: its K/V pool, or None for layers that read another layer's cache.
    kv: Vec<Option<B::Kv>>,
    pool: BlockPool,
    seqs: Vec<Option<SeqCache>>,
}

impl<B: Backend> Engine<B> {
    pub fn load(
        backend: B,
        spec: ModelSpec,
        file: &Arc<GgufFile>,
        config: EngineConfig,
        progress: &mut dyn FnMut(u64, u64),
    ) -> anyhow::Result<Self> {
        // The KV pools before the weights: `upload_table` then sees what memory they leave.
        let n_blocks = config.kv_tokens.div_ceil(KV_BLOCK).max(1);
        // One block past the pool's: the scratch block padding entries write to.
        let kv = spec
            .layers
            .iter()
            .map(|l| match l.kv_source {
                Some(_) => Ok(None),
                None => backend
                    .alloc_kv((n_blocks + 1) * KV_BLOCK, l.kv_dim())
                    .map(Some),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let weights = weights::load(&backend, &spec, file, progress)?;
        Ok(Engine {
            backend,
            spec,
            config,
            weights,
            kv,
            pool: BlockPool::new(n_blocks),
            seqs: Vec::new(),
        })
    }

    /// The uploaded weights.
    pub fn weights(&self) -> &Weights<B::Weight> {
        &self.weights
    }

    pub fn new_seq(&mut self) -> SeqId {
        match self.seqs.iter().position(Option::is_none) {
            Some(i) => {
                self.seqs[i] = Some(SeqCache::default());
                i
            }
            None => {
                self.seqs.push(Some(SeqCache::default()));
                self.seqs.len() - 1
            }
        }
    }

    pub fn free_seq(&mut self, id: SeqId) {
        if let Some(Some(mut s)) = self.seqs.get_mut(id).map(Option::take) {
            s.release_all(&mut self.pool);
        }
    }

    pub fn seq_len(&self, id: SeqId) -> usize {
        self.seqs
            .get(id)
            .and_then(Option::as_ref)
            .map_or(0, |s| s.len)
    }

    /// Drop a sequence's tokens from `len` on (chat turns reuse the cached history).
    pub fn truncate_seq(&mut self, id: SeqId, len: usize) {
        if let Some(Some(s)) = self.seqs.get_mut(id) {
            s.truncate(len, &mut self.pool);
        }
    }

    pub fn free_blocks(&self) -> usize {
        self.pool.n_free()
    }

    pub fn total_blocks(&self) -> usize {
        self.pool.n_blocks()
    }

    /// Prefix reuse: the longest run of registered blocks matching `hashes`
    /// (`kv::prefix_hashes` of a prompt) from the first, and how many of them are free now
    /// (sharing those takes free blocks).
    pub fn find_prefix(&self, hashes: &[u64]) -> (Vec<u32>, usize) {
        let mut blocks = Vec::new();
        let mut n_free = 0;
        for &h in hashes {
            let Some((b, free)) = self.pool.lookup(h) else {
                break;
            };
            blocks.push(b);
            n_free += usize::from(free);
        }
        (blocks, n_free)
    }

    /// Give an empty sequence the blocks `find_prefix` found: its first `16 · blocks.len()`
    /// tokens are then in the cache.
    pub fn attach_prefix(&mut self, id: SeqId, blocks: &[u32]) {
        let Some(Some(s)) = self.seqs.get_mut(id) else {
            return;
        };
        assert!(
            s.len == 0 && s.blocks.is_empty(),
            "attach_prefix: sequence {id} is not empty"
        );
        for &b in blocks {
            self.pool.share(b);
        }
        s.blocks = blocks.to_vec();
        s.len = blocks.len() * KV_BLOCK;
    }

    /// Make blocks `range` of a sequence findable by `find_prefix`: they must be full and
    /// computed, `hashes[i]` the prefix hash of block `i`.
    pub fn register_prefix(&mut self, id: SeqId, hashes: &[u64], range: std::ops::Range<usize>) {
        let Some(Some(s)) = self.seqs.get(id) else {
            return;
        };
        for i in range {
            if (i + 1) * KV_BLOCK <= s.len {
                self.pool.register(s.blocks[i], hashes[i]);
            }
        }
    }

    /// Append the entries' tokens to their sequences and return the logits of the entries
    /// marked `logits`, in order. On error no sequence changes.
    pub fn step(&mut self, entries: &[BatchEntry]) -> Result<Vec<Vec<f32>>, EngineError> {
        let (logits, n) = self.run(entries)?;
        let flat = self.backend.read(&logits);
        Ok(flat
            .chunks_exact(self.spec.n_vocab)
            .take(n)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// As `step`, but return only the greedy token (the largest logit, the lowest id on ties)
    /// of each entry marked `logits`: a device backend copies 4 bytes per row instead of the
    /// logits. Gives the tokens `Sampler::sample` picks at temperature 0 without penalties.
    pub fn step_argmax(&mut self, entries: &[BatchEntry]) -> Result<Vec<u32>, EngineError> {
        let (logits, n) = self.run(entries)?;
        let mut ids = self.backend.argmax_rows(&logits, self.spec.n_vocab);
        ids.truncate(n);
        Ok(ids)
    }

    /// The bucket a step is padded to and replayed at, on a backend with graphs: a decode step
    /// (each entry one token of a distinct sequence, all wanting logits) by its entries; a
    /// prefill step (the entries one chunk of one sequence, at most the last wanting logits) by
    /// its tokens, when the bucket is at most twice that.
    fn bucket(&self, entries: &[BatchEntry], info: &StepInfo) -> Option<GraphBucket> {
        let n = entries.len();
        let first = entries.first()?;
        let distinct = entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.logits && entries[..i].iter().all(|o| o.seq != e.seq));
        if distinct {
            let b = *self.backend.graph_buckets().iter().find(|&&b| b >= n)?;
            return Some(GraphBucket::Decode(b));
        }
        let c0 = info.chunks[0];
        let one_chunk = entries.iter().all(|e| e.seq == first.seq)
            && (info.chunks.iter().enumerate())
                .all(|(i, c)| c.len == c0.len && c.index == c0.index + i as u32)
            && info.logit_rows.iter().all(|&r| r as usize == n - 1);
        let b = *self
            .backend
            .prefill_graph_buckets()
            .iter()
            .find(|&&b| b >= n)?;
        (one_chunk && b <= 2 * n).then_some(GraphBucket::Prefill(b))
    }

    /// Plan, upload and run one step's forward pass (replaying or recording a graph for
    /// padded steps). Returns the logits on the device and how many of their rows belong to
    /// `entries` (the rest are padding).
    fn run(&mut self, entries: &[BatchEntry]) -> Result<(B::Tensor, usize), EngineError> {
        let mut info = self.plan(entries)?;
        let n_real = info.logit_rows.len();
        let bucket = self.bucket(entries, &info);
        match bucket {
            Some(GraphBucket::Decode(b)) => self.pad(&mut info, b),
            Some(GraphBucket::Prefill(b)) => self.pad_prefill(&mut info, b),
            None => {}
        }
        let step = self.backend.begin_step(&info);
        let (n_tokens, n_logits) = (info.tokens.len(), info.logit_rows.len());
        if let Some(b) = bucket {
            if let Some(logits) = self.backend.graph_replay(b) {
                return Ok((logits, n_real));
            }
        }
        let recording = bucket.is_some_and(|b| self.backend.graph_begin(b));
        let (b, spec, w) = (&self.backend, &self.spec, &self.weights);
        let mut logits = forward(b, spec, w, &mut self.kv, &step, n_tokens, n_logits);
        if recording && !b.graph_end(bucket.expect("recording"), &logits) {
            drop(logits);
            logits = forward(b, spec, w, &mut self.kv, &step, n_tokens, n_logits);
        }
        Ok((logits, n_real))
    }

    /// Pad a planned decode step to `bucket` entries: token 0 at position 0 of a sequence of
    /// its own whose one block is the scratch block past the pool (never read by a real
    /// sequence); their logit rows are computed and ignored.
    fn pad(&self, info: &mut StepInfo, bucket: usize) {
        let scratch = self.pool.n_blocks() as u32;
        for _ in info.tokens.len()..bucket {
            info.logit_rows.push(info.tokens.len() as u32);
            info.tokens.push(0);
            info.positions.push(0);
            info.slots.push(scratch * KV_BLOCK as u32);
            info.chunks.push(Chunk::SINGLE);
            info.seq_index.push(info.block_tables.len() as u32);
            info.block_tables.push(vec![scratch]);
        }
    }

    /// Pad a planned prefill chunk to `bucket` tokens: token 0 at the positions after it, in
    /// its chunk (so the step stays one run of the prefill attention), writing K/V to the
    /// scratch block, whose blocks past the sequence's own are the scratch block too. Real
    /// tokens never attend to later positions, so the padding changes none of their values.
    /// The step's one logit row is the last real token's, wanted or not.
    fn pad_prefill(&self, info: &mut StepInfo, bucket: usize) {
        let scratch = self.pool.n_blocks() as u32;
        let n = info.tokens.len();
        let (last, chunk) = (info.positions[n - 1], info.chunks[n - 1]);
        for i in 1..=(bucket - n) as u32 {
            let pos = last + i;
            info.tokens.push(0);
            info.positions.push(pos);
            info.slots
                .push(scratch * KV_BLOCK as u32 + pos % KV_BLOCK as u32);
            info.seq_index.push(0);
            info.chunks.push(Chunk {
                len: chunk.len,
                index: chunk.index + i,
            });
        }
        let blocks = (last as usize + 1 + bucket - n).div_ceil(KV_BLOCK);
        let bt = &mut info.block_tables[0];
        bt.resize(bt.len().max(blocks), scratch);
        if info.logit_rows.is_empty() {
            info.logit_rows.push(n as u32 - 1);
        }
    }

    /// Positions and slots for a step; reserves blocks (all or nothing).
    fn plan(&mut self, entries: &[BatchEntry]) -> Result<StepInfo, EngineError> {
        let mut info = StepInfo::default();
        let mut order: Vec<SeqId> = Vec::new();
        let mut added: Vec<usize> = Vec::new();
        for e in entries {
            if e.token as usize >= self.spec.n_vocab {
                return Err(EngineError::BadToken {
                    token: e.token,
                    n_vocab: self.spec.n_vocab,
                });
            }
            if !matches!(self.seqs.get(e.seq), Some(Some(_))) {
                return Err(EngineError::UnknownSeq(e.seq));
            }
            let k = match order.iter().position(|&s| s == e.seq) {
                Some(k) => k,
                None => {
                    order.push(e.seq);
                    added.push(0);
                    order.len() - 1
                }
            };
            added[k] += 1;
        }
        let mut need_blocks = 0;
        for (&s, &n) in order.iter().zip(&added) {
            let seq = self.seqs[s].as_ref().expect("checked");
            let new_len = seq.len + n;
            if new_len > self.config.n_ctx {
                return Err(EngineError::ContextFull {
                    need: new_len,
                    limit: self.config.n_ctx,
                });
            }
            need_blocks += new_len.div_ceil(KV_BLOCK).saturating_sub(seq.blocks.len());
        }
        if need_blocks > self.pool.n_free() {
            return Err(EngineError::OutOfBlocks {
                need: need_blocks,
                free: self.pool.n_free(),
            });
        }
        for (&s, &n) in order.iter().zip(&added) {
            let seq = self.seqs[s].as_mut().expect("checked");
            let ok = seq.reserve(seq.len + n, &mut self.pool);
            debug_assert!(ok);
        }
        for (i, e) in entries.iter().enumerate() {
            let k = order.iter().position(|&s| s == e.seq).expect("seen");
            let seq = self.seqs[e.seq].as_mut().expect("checked");
            let pos = seq.len;
            seq.len += 1;
            info.tokens.push(e.token);
            info.positions.push(pos as u32);
            info.slots.push(seq.slot(pos));
            info.seq_index.push(k as u32);
            if e.logits {
                info.logit_rows.push(i as u32);
            }
        }
        info.chunks = run_chunks(entries);
        info.block_tables = order
            .iter()
            .map(|&s| self.seqs[s].as_ref().expect("checked").blocks.clone())
            .collect();
        Ok(info)
    }
}

/// Each entry's chunk: its own, or its place in its sequence's run of consecutive entries.
fn run_chunks(entries: &[BatchEntry]) -> Vec<Chunk> {
    let mut out = Vec::with_capacity(entries.len());
    let mut i = 0;
    while i < entries.len() {
        let seq = entries[i].seq;
        let len = entries[i..].iter().take_while(|e| e.seq == seq).count();
        for (j, e) in entries[i..i + len].iter().enumerate() {
            out.push(e.chunk.unwrap_or(Chunk {
                len: len as u32,
                index: j as u32,
            }));
        }
        i += len;
    }
    out
}
