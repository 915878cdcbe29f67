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

pub struct ModelTensors {
    pub token_embd: String,
    pub output_norm: String,
    /// `output.weight`, or `token_embd.weight` when tied.
    pub output: String,
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
        for (t, l) in self.layers.iter().zip(&spec.layers) {
            let (q, kv, hd) = (l.q_dim() as u64, l.kv_dim() as u64, l.head_dim as u64);
            let ff = l.n_ff as u64;
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
