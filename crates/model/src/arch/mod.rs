//! One small file per architecture: each maps GGUF keys and tensor names to a `ModelSpec`.

pub mod gemma3;
pub mod gemma4;
pub mod llama;

use kestrel_gguf::GgufFile;

use crate::error::{ModelError, Result};
use crate::hparams::{check_range, Hparams};
use crate::spec::{Arch, FfnKind, LayerSpec, ModelSpec, RopeSpec};

/// Facts every decoder-only architecture states the same way.
pub(crate) struct Common {
    pub n_layer: usize,
    pub d_model: usize,
    pub n_head: Vec<usize>,
    pub n_kv_head: Vec<usize>,
    pub n_ff: Vec<usize>,
    pub head_dim: usize,
    pub n_ctx_train: usize,
    pub norm_eps: f32,
    pub n_vocab: usize,
    pub tied_output: bool,
}

impl Common {
    pub fn read(hp: &Hparams) -> Result<Common> {
        let n_layer = check_range("block_count", hp.u("block_count")?, 1024)?;
        let d_model = check_range("embedding_length", hp.u("embedding_length")?, 1 << 16)?;
        let n_head = hp
            .per_layer_u("attention.head_count", n_layer)?
            .ok_or_else(|| missing(hp, "attention.head_count"))?;
        let n_kv_head = hp
            .per_layer_u("attention.head_count_kv", n_layer)?
            .unwrap_or_else(|| n_head.clone());
        let n_ff = hp
            .per_layer_u("feed_forward_length", n_layer)?
            .ok_or_else(|| missing(hp, "feed_forward_length"))?;
        for (i, (&h, &kv)) in n_head.iter().zip(&n_kv_head).enumerate() {
            if h == 0 || kv == 0 || h % kv != 0 {
                return Err(ModelError::BadParam {
                    key: format!("{}.attention.head_count_kv", hp.arch),
                    reason: format!("layer {i}: {h} heads are not a multiple of {kv} kv heads"),
                });
            }
        }
        let head_dim = match hp.opt_u("attention.key_length")? {
            Some(k) => k,
            None => d_model / n_head[0],
        };
        check_range("attention.key_length", head_dim, 1024)?;
        let norm_eps = hp
            .opt_f("attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| missing(hp, "attention.layer_norm_rms_epsilon"))?;
        let embd = hp.f.require_tensor("token_embd.weight")?;
        if embd.shape.len() != 2 || embd.shape[0] as usize != d_model {
            return Err(ModelError::WrongShape {
                name: "token_embd.weight".into(),
                found: embd.shape.clone(),
                expected: vec![d_model as u64, 0],
            });
        }
        Ok(Common {
            n_layer,
            d_model,
            n_head,
            n_kv_head,
            n_ff,
            head_dim,
            n_ctx_train: hp.opt_u("context_length")?.unwrap_or(4096),
            norm_eps,
            n_vocab: embd.shape[1] as usize,
            tied_output: hp.f.tensor("output.weight").is_none(),
        })
    }

    /// A plain layer (Llama/Qwen family); arch files adjust fields.
    pub fn layer(&self, i: usize, rope: RopeSpec) -> LayerSpec {
        LayerSpec {
            n_head: self.n_head[i],
            n_kv_head: self.n_kv_head[i],
            head_dim: self.head_dim,
            window: None,
            rope,
            qkv_bias: false,
            qk_norm: false,
            v_norm: false,
            kv_source: None,
            k_eq_v: false,
            attn_scale: 1.0 / (self.head_dim as f32).sqrt(),
            scale_q_first: false,
            sandwich_norms: false,
            ffn: FfnKind::SiluGated,
            n_ff: self.n_ff[i],
            ple: false,
            layer_output_scale: false,
        }
    }

    pub fn spec(self, arch: Arch, f: &GgufFile, layers: Vec<LayerSpec>) -> ModelSpec {
        ModelSpec {
            arch,
            name: f
                .get_str("general.name")
                .ok()
                .flatten()
                .unwrap_or(arch.name())
                .to_string(),
            n_vocab: self.n_vocab,
            d_model: self.d_model,
            n_ctx_train: self.n_ctx_train,
            norm_eps: self.norm_eps,
            embed_scale: None,
            tied_output: self.tied_output,
            final_logit_softcap: None,
            ple: None,
            layers,
        }
    }
}

fn missing(hp: &Hparams, k: &str) -> ModelError {
    ModelError::Gguf(kestrel_gguf::GgufError::MissingKey(format!(
        "{}.{}",
        hp.arch, k
    )))
}

/// Linear RoPE scaling factor → position multiplier.
pub(crate) fn linear_freq_scale(hp: &Hparams) -> Result<f32> {
    let ty = hp.opt_str("rope.scaling.type")?;
    let factor = hp.opt_f("rope.scaling.factor")?;
    Ok(match (ty, factor) {
        (Some("linear"), Some(f)) if f > 0.0 => 1.0 / f,
        (None | Some("none"), _) => 1.0,
        (Some(t), _) if t != "linear" => {
            return Err(ModelError::Unsupported(format!("rope scaling type {t:?}")))
        }
        _ => 1.0,
    })
}

/// Build the spec for whatever architecture the file declares.
pub fn spec_from_gguf(f: &GgufFile) -> Result<ModelSpec> {
    let arch = f.architecture()?;
    match arch {
        "llama" => llama::spec(f, Arch::Llama),
        "qwen2" => llama::spec(f, Arch::Qwen2),
        "qwen3" => llama::spec(f, Arch::Qwen3),
        "gemma3" => gemma3::spec(f),
        "gemma4" => gemma4::spec(f),
        other => Err(ModelError::UnknownArch(other.into())),
    }
}
