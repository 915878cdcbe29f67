//! The presets: the real hyperparameters of each model, and the per-layer geometry derived from
//! them (sliding or global, KV heads, head size, FFN width, KV sharing). Sources: the model
//! configs, shared/specs/gemma.md §1 (Gemma 3) and §3.1 (Gemma 4).

use anyhow::{bail, Result};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    #[value(name = "qwen3-0.6b")]
    Qwen3_0_6b,
    #[value(name = "qwen3-8b")]
    Qwen3_8b,
    #[value(name = "llama3-8b")]
    Llama3_8b,
    #[value(name = "gemma3-4b")]
    Gemma3_4b,
    #[value(name = "gemma3-12b")]
    Gemma3_12b,
    #[value(name = "gemma4-e2b")]
    Gemma4E2b,
    #[value(name = "gemma4-e4b")]
    Gemma4E4b,
    #[value(name = "gemma4-12b")]
    Gemma4_12b,
}

impl Preset {
    #[cfg(test)]
    pub const ALL: [Preset; 8] = [
        Preset::Qwen3_0_6b,
        Preset::Qwen3_8b,
        Preset::Llama3_8b,
        Preset::Gemma3_4b,
        Preset::Gemma3_12b,
        Preset::Gemma4E2b,
        Preset::Gemma4E4b,
        Preset::Gemma4_12b,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Qwen3_0_6b => "qwen3-0.6b",
            Preset::Qwen3_8b => "qwen3-8b",
            Preset::Llama3_8b => "llama3-8b",
            Preset::Gemma3_4b => "gemma3-4b",
            Preset::Gemma3_12b => "gemma3-12b",
            Preset::Gemma4E2b => "gemma4-e2b",
            Preset::Gemma4E4b => "gemma4-e4b",
            Preset::Gemma4_12b => "gemma4-12b",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen3,
    Gemma3,
    Gemma4,
}

impl Family {
    /// `general.architecture`.
    pub fn arch(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen3 => "qwen3",
            Family::Gemma3 => "gemma3",
            Family::Gemma4 => "gemma4",
        }
    }
}

/// Which tensor-type mix the file gets (see `plan::tensor_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// llama.cpp's Q4_K_M.
    Q4KM,
    /// Gemma 4 E2B/E4B: every matrix Q8_0 (PLE table too), `per_layer_model_proj` F16, the small
    /// per-layer PLE matrices and all 1-D tensors F32.
    Gemma4Q8,
    /// Gemma 4 12B: matrices Q4_0, the tied embedding Q6_K, 1-D tensors F32.
    Gemma4Q4,
}

impl Mix {
    /// `general.file_type` (llama_ftype).
    pub fn file_type(self) -> u32 {
        match self {
            Mix::Q4KM => 15,
            Mix::Gemma4Q8 => 7,
            Mix::Gemma4Q4 => 2,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub preset: Preset,
    pub family: Family,
    pub mix: Mix,
    pub n_layer: usize,
    pub d_model: usize,
    pub n_head: usize,
    /// KV heads of sliding layers (and of every layer without sliding windows).
    pub n_kv_head: usize,
    /// KV heads of Gemma 4 global layers.
    pub n_kv_head_global: usize,
    /// Head size of sliding layers (and of every layer without sliding windows).
    pub head_dim: usize,
    /// Head size of Gemma 4 global layers.
    pub head_dim_global: usize,
    pub n_ff: usize,
    /// FFN width of the shared-KV layers (Gemma 4 E2B's double-wide MLP).
    pub n_ff_shared: usize,
    pub n_vocab: usize,
    pub n_ctx: usize,
    pub rope_base: f32,
    pub rope_base_swa: f32,
    /// Linear RoPE scaling factor on global layers (Gemma 3 4B/12B).
    pub rope_linear: Option<f32>,
    pub window: Option<usize>,
    /// Layer `i` is global iff `i % period == period - 1` (Gemma 3 and 4; Gemma 4 also forces
    /// the last layer global, as HF does).
    pub swa_period: usize,
    /// Trailing layers that read an earlier layer's KV cache (Gemma 4 E2B/E4B).
    pub shared_kv_layers: usize,
    /// Per-layer-embedding width P (Gemma 4 E2B/E4B; 0 = none).
    pub ple_dim: usize,
    /// Gemma 4 global layers have no `attn_v`: V is the raw K projection.
    pub k_eq_v: bool,
    pub tied: bool,
    pub qk_norm: bool,
    pub norm_eps: f32,
}

/// One layer's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layer {
    pub global: bool,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    /// Has `attn_k` (and `attn_k_norm`): false on Gemma 4 shared-KV layers.
    pub owns_kv: bool,
    /// Has `attn_v`.
    pub has_v: bool,
}

pub fn config(p: Preset) -> Config {
    let qwen3 = |n_layer, d_model, n_head, n_ff, tied| Config {
        preset: p,
        family: Family::Qwen3,
        mix: Mix::Q4KM,
        n_layer,
        d_model,
        n_head,
        n_kv_head: 8,
        n_kv_head_global: 8,
        head_dim: 128,
        head_dim_global: 128,
        n_ff,
        n_ff_shared: n_ff,
        n_vocab: 151_936,
        n_ctx: 40_960,
        rope_base: 1e6,
        rope_base_swa: 1e6,
        rope_linear: None,
        window: None,
        swa_period: 0,
        shared_kv_layers: 0,
        ple_dim: 0,
        k_eq_v: false,
        tied,
        qk_norm: true,
        norm_eps: 1e-6,
    };
    let gemma3 = |n_layer, d_model, n_head, n_kv_head, n_ff| Config {
        preset: p,
        family: Family::Gemma3,
        mix: Mix::Q4KM,
        n_layer,
        d_model,
        n_head,
        n_kv_head,
        n_kv_head_global: n_kv_head,
        head_dim: 256,
        head_dim_global: 256,
        n_ff,
        n_ff_shared: n_ff,
        n_vocab: 262_144,
        n_ctx: 131_072,
        rope_base: 1e6,
        rope_base_swa: 1e4,
        rope_linear: Some(8.0),
        window: Some(1024),
        swa_period: 6,
        shared_kv_layers: 0,
        ple_dim: 0,
        k_eq_v: false,
        tied: true,
        qk_norm: true,
        norm_eps: 1e-6,
    };
    let gemma4 = Config {
        preset: p,
        family: Family::Gemma4,
        mix: Mix::Gemma4Q8,
        n_layer: 42,
        d_model: 2560,
        n_head: 8,
        n_kv_head: 2,
        n_kv_head_global: 2,
        head_dim: 256,
        head_dim_global: 512,
        n_ff: 10240,
        n_ff_shared: 10240,
        n_vocab: 262_144,
        n_ctx: 131_072,
        rope_base: 1e6,
        rope_base_swa: 1e4,
        rope_linear: None,
        window: Some(512),
        swa_period: 6,
        shared_kv_layers: 18,
        ple_dim: 256,
        k_eq_v: false,
        tied: true,
        qk_norm: true,
        norm_eps: 1e-6,
    };
    match p {
        Preset::Qwen3_0_6b => qwen3(28, 1024, 16, 3072, true),
        Preset::Qwen3_8b => qwen3(36, 4096, 32, 12288, false),
        Preset::Llama3_8b => Config {
            family: Family::Llama,
            n_ff: 14336,
            n_ff_shared: 14336,
            n_vocab: 128_256,
            n_ctx: 8192,
            rope_base: 5e5,
            rope_base_swa: 5e5,
            qk_norm: false,
            norm_eps: 1e-5,
            ..qwen3(32, 4096, 32, 14336, false)
        },
        Preset::Gemma3_4b => gemma3(34, 2560, 8, 4, 10240),
        Preset::Gemma3_12b => gemma3(48, 3840, 16, 8, 15360),
        Preset::Gemma4E2b => Config {
            n_layer: 35,
            d_model: 1536,
            n_kv_head: 1,
            n_kv_head_global: 1,
            n_ff: 6144,
            n_ff_shared: 12288,
            swa_period: 5,
            shared_kv_layers: 20,
            ..gemma4
        },
        Preset::Gemma4E4b => gemma4,
        Preset::Gemma4_12b => Config {
            mix: Mix::Gemma4Q4,
            n_layer: 48,
            d_model: 3840,
            n_head: 16,
            n_kv_head: 8,
            n_kv_head_global: 1,
            n_ff: 15360,
            n_ff_shared: 15360,
            n_ctx: 262_144,
            window: Some(1024),
            shared_kv_layers: 0,
            ple_dim: 0,
            k_eq_v: true,
            ..gemma4
        },
    }
}

impl Config {
    /// The same model cut to its first `n` layers (for tests). Gemma 4 keeps its sliding/global
    /// pattern and last-layer-global rule; the shared-KV tail shrinks in proportion, but never so
    /// far that the owning layers lack a layer of each type for the shared ones to read.
    pub fn with_layers(mut self, n: usize) -> Result<Config> {
        if n == 0 || n > self.n_layer {
            bail!(
                "--layers {n}: {} has {} layers",
                self.preset.name(),
                self.n_layer
            );
        }
        let mut shared = self.shared_kv_layers * n / self.n_layer;
        self.n_layer = n;
        while shared > 0 {
            let owners: Vec<bool> = (0..n - shared).map(|i| self.is_global(i)).collect();
            if owners.contains(&true) && owners.contains(&false) {
                break;
            }
            shared -= 1;
        }
        self.shared_kv_layers = shared;
        Ok(self)
    }

    fn is_global(&self, i: usize) -> bool {
        let p = self.swa_period;
        match self.family {
            Family::Llama | Family::Qwen3 => true,
            Family::Gemma3 => self.window.is_none() || p == 0 || i % p == p - 1,
            Family::Gemma4 => i % p == p - 1 || i + 1 == self.n_layer,
        }
    }

    /// First layer that reads another layer's KV cache.
    pub fn first_shared(&self) -> usize {
        self.n_layer - self.shared_kv_layers
    }

    pub fn layer(&self, i: usize) -> Layer {
        let global = self.is_global(i);
        let gemma4_global = global && self.family == Family::Gemma4;
        let owns_kv = i < self.first_shared();
        Layer {
            global,
            n_kv_head: if gemma4_global {
                self.n_kv_head_global
            } else {
                self.n_kv_head
            },
            head_dim: if gemma4_global {
                self.head_dim_global
            } else {
                self.head_dim
            },
            n_ff: if owns_kv { self.n_ff } else { self.n_ff_shared },
            owns_kv,
            has_v: owns_kv && !(self.k_eq_v && gemma4_global),
        }
    }

    pub fn layers(&self) -> Vec<Layer> {
        (0..self.n_layer).map(|i| self.layer(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globals(c: &Config) -> Vec<usize> {
        (0..c.n_layer).filter(|&i| c.layer(i).global).collect()
    }

    #[test]
    fn gemma_layer_patterns_match_the_spec() {
        let g3 = config(Preset::Gemma3_4b);
        assert_eq!(globals(&g3), vec![5, 11, 17, 23, 29]);
        let e2b = config(Preset::Gemma4E2b);
        assert_eq!(globals(&e2b), (0..7).map(|k| 5 * k + 4).collect::<Vec<_>>());
        assert_eq!(e2b.first_shared(), 15);
        let ff: Vec<usize> = e2b.layers().iter().map(|l| l.n_ff).collect();
        assert_eq!(ff, [vec![6144; 15], vec![12288; 20]].concat());
        let e4b = config(Preset::Gemma4E4b);
        assert_eq!(globals(&e4b), vec![5, 11, 17, 23, 29, 35, 41]);
        assert_eq!(e4b.first_shared(), 24);
        assert!(e4b.layer(23).owns_kv && !e4b.layer(24).owns_kv);
        assert_eq!(e4b.layer(5).head_dim, 512);
        assert_eq!(e4b.layer(4).head_dim, 256);
        let g12 = config(Preset::Gemma4_12b);
        let kv: Vec<usize> = g12.layers().iter().map(|l| l.n_kv_head).collect();
        assert_eq!(&kv[..7], &[8, 8, 8, 8, 8, 1, 8]);
        assert!(g12.layer(4).has_v && !g12.layer(5).has_v && g12.layer(5).owns_kv);
    }

    #[test]
    fn cutting_layers_keeps_a_valid_kv_sharing_layout() {
        let e4b = config(Preset::Gemma4E4b).with_layers(2).unwrap();
        assert_eq!(e4b.shared_kv_layers, 0);
        assert!(!e4b.layer(0).global && e4b.layer(1).global);
        let e4b = config(Preset::Gemma4E4b).with_layers(14).unwrap();
        // 18 * 14 / 42 = 6 shared: owners 0..8 hold sliding layers and global layer 5.
        assert_eq!(e4b.shared_kv_layers, 6);
        let e2b = config(Preset::Gemma4E2b).with_layers(6).unwrap();
        // 20 * 6 / 35 = 3 would leave owners 0..3 without a global layer: 1 (owners 0..5).
        assert_eq!(e2b.shared_kv_layers, 1);
        assert!(config(Preset::Qwen3_8b).with_layers(0).is_err());
        assert!(config(Preset::Qwen3_8b).with_layers(37).is_err());
    }
}
