//! The data that drives the one generic decoder: model-level facts and one `LayerSpec` per layer.

/// How a layer rotates Q and K.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    pub base: f32,
    /// Multiplies positions (1 / linear scaling factor).
    pub freq_scale: f32,
    /// Rotated dimensions; dims at or above pass through.
    pub n_rot: usize,
    /// NeoX pairs (i, i + n_rot/2); otherwise adjacent pairs (2i, 2i+1).
    pub neox: bool,
    /// Optional per-pair divisor tensor (`rope_freqs.weight`).
    pub freq_factors: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnKind {
    /// down(silu(gate x) * up x)
    SiluGated,
    /// down(gelu_tanh(gate x) * up x)
    GeluTanhGated,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Sliding window: a query at p sees keys p-window+1 ..= p. None = global.
    pub window: Option<usize>,
    pub rope: RopeSpec,
    pub qkv_bias: bool,
    pub qk_norm: bool,
    /// Weightless RMS norm on V (Gemma 4).
    pub v_norm: bool,
    /// Read K/V from this earlier layer's cache instead of computing them (Gemma 4 tail).
    pub kv_source: Option<usize>,
    /// No `attn_v`: V is the raw K projection (Gemma 4 global layers).
    pub k_eq_v: bool,
    pub attn_scale: f32,
    /// Multiply Q by `attn_scale` before attention (which then scales scores by 1) rather than
    /// scaling the scores: llama.cpp's Gemma 3 graph does, and the f16 rounding of Q in its CPU
    /// attention sees the scaled values (they differ where one is an f16 subnormal).
    pub scale_q_first: bool,
    /// Post-attention and post-FFN norms (Gemma).
    pub sandwich_norms: bool,
    pub ffn: FfnKind,
    pub n_ff: usize,
    /// Per-layer-embedding injection (Gemma 4).
    pub ple: bool,
    /// Multiply the residual by `blk.N.layer_output_scale` at the end (Gemma 4).
    pub layer_output_scale: bool,
}

impl LayerSpec {
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }
    /// The layer whose cache this layer reads.
    pub fn cache_layer(&self, own: usize) -> usize {
        self.kv_source.unwrap_or(own)
    }
}

/// Per-layer embeddings (Gemma 4): a token-indexed table of L·P values per token.
#[derive(Clone, Debug, PartialEq)]
pub struct PleSpec {
    pub dim: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
    Gemma4,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
            Arch::Gemma4 => "gemma4",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub arch: Arch,
    pub name: String,
    pub n_vocab: usize,
    pub d_model: usize,
    pub n_ctx_train: usize,
    pub norm_eps: f32,
    /// Multiplies embedding rows (Gemma: sqrt(d_model), in f32).
    pub embed_scale: Option<f32>,
    /// Output head is `token_embd` (no `output.weight`).
    pub tied_output: bool,
    pub final_logit_softcap: Option<f32>,
    pub ple: Option<PleSpec>,
    pub layers: Vec<LayerSpec>,
}

impl ModelSpec {
    pub fn n_layer(&self) -> usize {
        self.layers.len()
    }
    /// Largest sliding window over all layers, or None when any layer is global.
    pub fn max_window(&self) -> Option<usize> {
        self.layers
            .iter()
            .map(|l| l.window)
            .try_fold(0, |m, w| w.map(|w| m.max(w)))
    }
}
