//! The one interface between the generic decoder and the devices. A backend runs ops on its own
//! tensors and holds no model logic: which ops run, in what order, is `forward.rs`'s business.

use std::ops::Range;
use std::sync::Arc;

use kestrel_gguf::{GgmlType, GgufFile};
use kestrel_model::{FfnKind, RopeSpec};

/// A weight as stored in the GGUF file (block format, ggml shape `[in, out]`). The file handle
/// lets a host backend keep zero-copy views into the mapping.
#[derive(Clone)]
pub struct WeightRef<'a> {
    pub name: &'a str,
    pub ty: GgmlType,
    pub shape: &'a [u64],
    pub file: &'a Arc<GgufFile>,
    /// Byte range of the data within `file.bytes()`.
    pub range: Range<usize>,
}

impl WeightRef<'_> {
    pub fn data(&self) -> &[u8] {
        &self.file.bytes()[self.range.clone()]
    }
}

/// Per-step metadata, written once per forward so kernels read positions and KV slots from
/// backend memory (a captured GPU graph replays with no parameter updates).
#[derive(Clone, Debug, Default)]
pub struct StepInfo {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    /// KV slot each token's K/V is written to.
    pub slots: Vec<u32>,
    /// Index into `block_tables` of each token's sequence.
    pub seq_index: Vec<u32>,
    /// Per sequence in the step: the KV block of each of its positions' blocks.
    pub block_tables: Vec<Vec<u32>>,
    /// Rows (token indices) whose logits are wanted, in output order.
    pub logit_rows: Vec<u32>,
    /// Per token: the prefill chunk it belongs to (see [`Chunk`]).
    pub chunks: Vec<Chunk>,
}

/// The batch a token is computed as part of, for backends whose kernel choice — and so its
/// rounding — depends on how many tokens a matmul holds (the CPU backend follows llama.cpp's,
/// which does). A backend computes each token as if its chunk ran alone, whatever else shares
/// the step, so a sequence's numbers do not depend on its neighbours: the server's answers equal
/// a lone run's, and a sequence recomputed after preemption gets back the same K/V.
/// Token `index` of a chunk of `len` tokens; a decode token is `Chunk::SINGLE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Chunk {
    pub len: u32,
    pub index: u32,
}

impl Chunk {
    pub const SINGLE: Chunk = Chunk { len: 1, index: 0 };

    /// Token `pos` of a prompt of `prompt_len` tokens prefilled in chunks of `ubatch` from
    /// position 0; positions at or past the prompt are decode tokens.
    pub fn of_prompt(pos: usize, prompt_len: usize, ubatch: usize) -> Chunk {
        if pos >= prompt_len {
            return Chunk::SINGLE;
        }
        let ubatch = ubatch.max(1);
        let start = pos / ubatch * ubatch;
        Chunk {
            len: (prompt_len - start).min(ubatch) as u32,
            index: (pos - start) as u32,
        }
    }
}

pub const KV_BLOCK: usize = 16;

/// The padded form of a step replayed as a graph (see `Backend::graph_buckets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GraphBucket {
    /// `n` sequences of one decode token each.
    Decode(usize),
    /// One chunk of one sequence, `n` tokens.
    Prefill(usize),
}

/// Geometry of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnGeom {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub window: Option<usize>,
    pub scale: f32,
}

pub trait Backend {
    /// A weight resident on the device.
    type Weight;
    /// A row-major f32 matrix of activations `[rows, cols]`.
    type Tensor;
    /// One layer's K and V pools (`n_slots` × kv_dim each).
    type Kv;
    /// The step's metadata in device memory.
    type Step;

    fn name(&self) -> String;
    /// Prompt tokens per forward pass when the user names none (`--ubatch`).
    fn default_ubatch(&self) -> usize {
        // llama.cpp's default: the CPU's arithmetic follows it chunk by chunk.
        512
    }
    fn upload(&self, w: WeightRef) -> anyhow::Result<Self::Weight>;
    /// `upload` for a table only `embed` reads (Gemma 4's per-layer-embedding table, often the
    /// largest tensor of the model but read a few rows per step). Called after every other
    /// weight and the KV pools, so a backend with its own memory can see what is left and keep
    /// the table where it reads more slowly instead of failing to load.
    fn upload_table(&self, w: WeightRef) -> anyhow::Result<Self::Weight> {
        self.upload(w)
    }
    fn alloc(&self, rows: usize, cols: usize) -> Self::Tensor;
    fn alloc_kv(&self, n_slots: usize, kv_dim: usize) -> anyhow::Result<Self::Kv>;
    fn begin_step(&self, step: &StepInfo) -> Self::Step;

    /// out[t] = table[token t] * scale: a per-token gather of table rows, dequantized (the
    /// token embedding, and Gemma 4's per-layer-embedding table).
    fn embed(&self, table: &Self::Weight, step: &Self::Step, scale: f32, out: &mut Self::Tensor);
    /// RMS norm over each run of `width` values (width < cols normalises per head), times `w`.
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        w: Option<&Self::Weight>,
        width: usize,
        eps: f32,
        out: &mut Self::Tensor,
    );
    /// out = x · Wᵀ (W stored `[in, out]` in ggml order).
    fn matmul(&self, w: &Self::Weight, x: &Self::Tensor, out: &mut Self::Tensor);
    /// `matmul` of one input by several weights (q/k/v, gate/up), with the same results; a
    /// backend may run them together (the CUDA one as one launch).
    fn matmuls(&self, x: &Self::Tensor, jobs: &mut [(&Self::Weight, &mut Self::Tensor)]) {
        for (w, out) in jobs.iter_mut() {
            self.matmul(w, x, out);
        }
    }
    fn add_bias(&self, x: &mut Self::Tensor, bias: &Self::Weight);
    /// Rotate each head of `x` (heads of `head_dim` values) at the step's positions.
    fn rope(
        &self,
        x: &mut Self::Tensor,
        head_dim: usize,
        rope: &RopeSpec,
        factors: Option<&Self::Weight>,
        step: &Self::Step,
    );
    /// Store each token's K and V row at its slot.
    fn kv_write(&self, k: &Self::Tensor, v: &Self::Tensor, kv: &mut Self::Kv, step: &Self::Step);
    /// Causal (optionally windowed) attention of each token over its sequence's cached K/V.
    fn attention(
        &self,
        q: &Self::Tensor,
        kv: &Self::Kv,
        geom: AttnGeom,
        step: &Self::Step,
        out: &mut Self::Tensor,
    );
    /// gate = act(gate) * up
    fn gated_act(&self, gate: &mut Self::Tensor, up: &Self::Tensor, kind: FfnKind);
    /// x += y
    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor);
    /// x *= s[0] (a one-element weight)
    fn scale_by(&self, x: &mut Self::Tensor, s: &Self::Weight);
    /// A post-norm residual over whole rows: `x = (x + rms_norm(y) · w)`, then `x *= scale[0]`
    /// when given; the same bits as `rms_norm` into `tmp`, `add` and `scale_by`, which is the
    /// default. `tmp` is scratch of `y`'s shape whose contents are unspecified afterwards (a
    /// backend may fuse the three ops into one launch and never write it).
    #[allow(clippy::too_many_arguments)]
    fn add_rms_norm(
        &self,
        x: &mut Self::Tensor,
        y: &Self::Tensor,
        w: Option<&Self::Weight>,
        width: usize,
        eps: f32,
        scale: Option<&Self::Weight>,
        tmp: &mut Self::Tensor,
    ) {
        self.rms_norm(y, w, width, eps, tmp);
        self.add(x, tmp);
        if let Some(s) = scale {
            self.scale_by(x, s);
        }
    }
    /// x *= c
    fn scale(&self, x: &mut Self::Tensor, c: f32);
    /// out[t] = src[t][col0 .. col0 + out.cols] (one layer's slice of a row of per-layer values)
    fn copy_cols(&self, src: &Self::Tensor, col0: usize, out: &mut Self::Tensor);
    /// out = the step's logit rows of x
    fn gather_logit_rows(&self, x: &Self::Tensor, step: &Self::Step, out: &mut Self::Tensor);
    /// x = cap * tanh(x / cap)
    fn softcap(&self, x: &mut Self::Tensor, cap: f32);
    fn copy(&self, src: &Self::Tensor, dst: &mut Self::Tensor);
    /// Read a tensor back to the host.
    fn read(&self, x: &Self::Tensor) -> Vec<f32>;

    /// The index of each row's largest value, the lowest index on ties (what greedy sampling
    /// picks). A device backend reduces on the device and copies 4 bytes per row; the default
    /// reads the rows back and searches them on the host.
    /// `x` holds rows of `cols` values.
    fn argmax_rows(&self, x: &Self::Tensor, cols: usize) -> Vec<u32> {
        self.read(x)
            .chunks_exact(cols.max(1))
            .map(crate::sampler::argmax)
            .collect()
    }

    /// Whether a token computed as part of `chunk` gets the same bits as in every other chunk
    /// this is true for, so its K/V can be shared with other requests (prefix reuse) without
    /// changing any answer. A backend whose bits already follow what shares a step (the GPU's
    /// GEMM path) answers whether the token takes the same kernels in every such chunk: sharing
    /// then adds no variation its neighbours don't already cause. The default suits a backend
    /// whose arithmetic is per token.
    fn chunk_invariant(&self, _chunk: Chunk) -> bool {
        true
    }

    // Step graphs. A backend that records and replays the ops of a step (CUDA graphs) lists
    // buckets; `Engine::step` pads a step of a fixed form to its bucket with dummy tokens whose
    // KV writes go to a reserved scratch block, so the step's shapes — and every kernel
    // argument — are fixed per bucket, and everything that changes from step to step lives in
    // the step buffer `begin_step` uploads. Two forms: a decode step (one token of each of n
    // distinct sequences, all wanting logits) is padded with one-token sequences; a prefill
    // step (one chunk of one sequence, at most its last token wanting logits) with tokens
    // continuing the chunk, and its last token's logits are computed even if not wanted. The
    // defaults (no buckets) run every step eagerly.

    /// Batch sizes decode steps are padded to and replayed at; empty = no decode graphs.
    fn graph_buckets(&self) -> &[usize] {
        &[]
    }
    /// Token counts prefill chunks are padded to and replayed at, ascending; empty = no
    /// prefill graphs. A chunk takes the smallest bucket that holds it, unless that is over
    /// twice its length (the padding would cost more than a replay saves).
    fn prefill_graph_buckets(&self) -> &[usize] {
        &[]
    }
    /// After `begin_step` of a padded step: replay the graph recorded for `bucket`, if one is
    /// ready, and return its logits.
    fn graph_replay(&self, _bucket: GraphBucket) -> Option<Self::Tensor> {
        None
    }
    /// After `begin_step`: start recording this step's ops for `bucket` (they run only at
    /// `graph_end`). False: run this step eagerly.
    fn graph_begin(&self, _bucket: GraphBucket) -> bool {
        false
    }
    /// Stop recording; the recorded graph runs once to produce `logits` and is kept for
    /// replays. False if the recording failed: nothing ran, and the caller runs the step
    /// eagerly instead.
    fn graph_end(&self, _bucket: GraphBucket, _logits: &Self::Tensor) -> bool {
        false
    }
}
