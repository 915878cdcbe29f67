//! The tensors a spec needs, with their expected shapes (ggml order: [in, out]).
//! Loading checks every one of them before any weight is used.

use kestrel_gguf::{GgufFile, TensorInfo};

use crate::error::{ModelError, Result};
use crate::spec::{LayerSpec, ModelSpec};

/// Names of one layer's tensors; `None` where the spec does not use that tensor.
#[derive(Clone, Debug, Default)]
pub struct LayerTensors {
    pub attn_norm: String,
    pub wq: String,
    pub wk: Option<String>,
    pub wv: Option<String>,
    pub wo: String,
    pub bq: Option<String>,
    pub bk: Option<String>,
    pub bv: Option<String>,
    pub q_norm: Option<String>,
    pub k_norm: Option<String>,
    pub post_attn_norm: Option<String>,
    pub ffn_norm: String,
    pub gate: String,
    pub up: String,
    pub down: String,
    pub post_ffn_norm: Option<String>,
    pub ple_gate: Option<String>,
    pub ple_proj: Option<String>,
    pub ple_norm: Option<String>,
    pub out_scale: Option<String>,
}

/// The model-level per-layer-embedding tensors (Gemma 4).
#[derive(Clone, Debug)]
pub struct PleTensors {
    /// `[n_layer·P, n_vocab]`: per token, one P-slice per layer.
    pub token_embd: String,
    /// `[d_model, n_layer·P]`
    pub model_proj: String,
    /// `[P]`, shared by every layer's slice.
    pub proj_norm: String,
}

pub struct ModelTensors {
    pub token_embd: String,
    pub output_norm: String,
    /// `output.weight`, or `token_embd.weight` when tied.
    pub output: String,
    /// RoPE frequency factors, when any layer uses them.
    pub rope_freqs: Option<String>,
    pub ple: Option<PleTensors>,
    pub layers: Vec<LayerTensors>,
}

fn blk(i: usize, s: &str) -> String {
    format!("blk.{i}.{s}.weight")
}

fn bias(i: usize, s: &str) -> String {
    format!("blk.{i}.{s}.bias")
}

impl LayerTensors {
    fn new(i: usize, l: &LayerSpec) -> LayerTensors {
        let own_kv = l.kv_source.is_none();
        let opt = |cond: bool, s: &str| cond.then(|| blk(i, s));
        LayerTensors {
            attn_norm: blk(i, "attn_norm"),
            wq: blk(i, "attn_q"),
            wk: opt(own_kv, "attn_k"),
            wv: opt(own_kv && !l.k_eq_v, "attn_v"),
            wo: blk(i, "attn_output"),
            bq: l.qkv_bias.then(|| bias(i, "attn_q")),
            bk: (l.qkv_bias && own_kv).then(|| bias(i, "attn_k")),
            bv: (l.qkv_bias && own_kv).then(|| bias(i, "attn_v")),
            q_norm: opt(l.qk_norm, "attn_q_norm"),
            k_norm: opt(l.qk_norm && own_kv, "attn_k_norm"),
            post_attn_norm: opt(l.sandwich_norms, "post_attention_norm"),
            ffn_norm: blk(i, "ffn_norm"),
            gate: blk(i, "ffn_gate"),
            up: blk(i, "ffn_up"),
            down: blk(i, "ffn_down"),
            post_ffn_norm: opt(l.sandwich_norms, "post_ffw_norm"),
            ple_gate: opt(l.ple, "inp_gate"),
            ple_proj: opt(l.ple, "proj"),
            ple_norm: opt(l.ple, "post_norm"),
            out_scale: opt(l.layer_output_scale, "layer_output_scale"),
        }
    }
}

impl ModelTensors {
    pub fn new(spec: &ModelSpec) -> ModelTensors {
        ModelTensors {
            token_embd: "token_embd.weight".into(),
            output_norm: "output_norm.weight".into(),
            output: if spec.tied_output {
                "token_embd.weight".into()
            } else {
                "output.weight".into()
            },
            rope_freqs: spec.layers.iter().find_map(|l| l.rope.freq_factors.clone()),
            ple: spec.ple.as_ref().map(|_| PleTensors {
                token_embd: "per_layer_token_embd.weight".into(),
                model_proj: "per_layer_model_proj.weight".into(),
                proj_norm: "per_layer_proj_norm.weight".into(),
            }),
            layers: spec
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| LayerTensors::new(i, l))
                .collect(),
        }
    }

    /// Every required tensor exists with the expected shape.
    pub fn check(&self, spec: &ModelSpec, f: &GgufFile) -> Result<()> {
        let d = spec.d_model as u64;
        let v = spec.n_vocab as u64;
        expect(f, &self.token_embd, &[d, v])?;
        expect(f, &self.output_norm, &[d])?;
        expect(f, &self.output, &[d, v])?;
        if let (Some(p), Some(ple)) = (&self.ple, &spec.ple) {
            let (pd, lp) = (ple.dim as u64, (ple.dim * spec.n_layer()) as u64);
            // The table may have padding rows past the vocabulary (Gemma 3n pads to 262400).
            let t = f
                .tensor(&p.token_embd)
                .ok_or_else(|| ModelError::MissingTensor(p.token_embd.clone()))?;
            if t.shape.len() != 2 || t.shape[0] != lp || t.shape[1] < v {
                return Err(ModelError::WrongShape {
                    name: p.token_embd.clone(),
                    found: t.shape.clone(),
                    expected: vec![lp, v],
                });
            }
            expect(f, &p.model_proj, &[d, lp])?;
            expect(f, &p.proj_norm, &[pd])?;
        }
        for (t, l) in self.layers.iter().zip(&spec.layers) {
            let (q, kv, hd) = (l.q_dim() as u64, l.kv_dim() as u64, l.head_dim as u64);
            let ff = l.n_ff as u64;
            let ple = spec.ple.as_ref().map_or(0, |p| p.dim as u64);
            if let Some(name) = &l.rope.freq_factors {
                let t = f
                    .tensor(name)
                    .ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
                if t.shape.len() != 1 || t.shape[0] < (l.rope.n_rot / 2) as u64 {
                    return Err(ModelError::WrongShape {
                        name: name.clone(),
                        found: t.shape.clone(),
                        expected: vec![(l.rope.n_rot / 2) as u64],
                    });
                }
            }
            expect(f, &t.attn_norm, &[d])?;
            expect(f, &t.wq, &[d, q])?;
            expect(f, &t.wo, &[q, d])?;
            expect(f, &t.ffn_norm, &[d])?;
            expect(f, &t.gate, &[d, ff])?;
            expect(f, &t.up, &[d, ff])?;
            expect(f, &t.down, &[ff, d])?;
            for (name, shape) in [
                (&t.wk, vec![d, kv]),
                (&t.wv, vec![d, kv]),
                (&t.bq, vec![q]),
                (&t.bk, vec![kv]),
                (&t.bv, vec![kv]),
                (&t.q_norm, vec![hd]),
                (&t.k_norm, vec![hd]),
                (&t.post_attn_norm, vec![d]),
                (&t.post_ffn_norm, vec![d]),
                (&t.ple_norm, vec![d]),
                (&t.ple_gate, vec![d, ple]),
                (&t.ple_proj, vec![ple, d]),
                (&t.out_scale, vec![1]),
            ] {
                if let Some(n) = name {
                    expect(f, n, &shape)?;
                }
            }
        }
        Ok(())
    }
}

fn expect<'a>(f: &'a GgufFile, name: &str, shape: &[u64]) -> Result<&'a TensorInfo> {
    let t = f
        .tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
    if t.shape != shape {
        return Err(ModelError::WrongShape {
            name: name.into(),
            found: t.shape.clone(),
            expected: shape.to_vec(),
        });
    }
    Ok(t)
}
