//! Uploading a spec's tensors to a backend, once, at load.

use std::sync::Arc;

use kestrel_gguf::GgufFile;
use kestrel_model::{LayerTensors, ModelSpec, ModelTensors};

use crate::backend::{Backend, WeightRef};

pub struct LayerWeights<W> {
    pub attn_norm: W,
    pub wq: W,
    pub wk: Option<W>,
    pub wv: Option<W>,
    pub wo: W,
    pub bq: Option<W>,
    pub bk: Option<W>,
    pub bv: Option<W>,
    pub q_norm: Option<W>,
    pub k_norm: Option<W>,
    pub post_attn_norm: Option<W>,
    pub ffn_norm: W,
    pub gate: W,
    pub up: W,
    pub down: W,
    pub post_ffn_norm: Option<W>,
    pub ple: Option<LayerPleWeights<W>>,
    pub out_scale: Option<W>,
}

/// One layer's per-layer-embedding injection (Gemma 4).
pub struct LayerPleWeights<W> {
    /// `inp_gate` `[d_model, P]`
    pub gate: W,
    /// `proj` `[P, d_model]`
    pub proj: W,
    /// `post_norm` `[d_model]`
    pub post_norm: W,
}

/// The model-level per-layer-embedding weights (Gemma 4).
pub struct PleWeights<W> {
    pub token_embd: W,
    pub model_proj: W,
    pub proj_norm: W,
}

pub struct Weights<W> {
    pub token_embd: W,
    pub output_norm: W,
    /// None when tied to `token_embd`.
    pub output: Option<W>,
    pub rope_freqs: Option<W>,
    pub ple: Option<PleWeights<W>>,
    pub layers: Vec<LayerWeights<W>>,
}

impl<W> Weights<W> {
    pub fn output(&self) -> &W {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    /// Every layer's matrices (attention and FFN projections, per-layer-embedding gate and
    /// projection): what a device may keep a second, faster copy of.
    pub fn layer_matrices(&self) -> Vec<&W> {
        let mut v = Vec::new();
        for l in &self.layers {
            v.push(&l.wq);
            v.extend(l.wk.as_ref());
            v.extend(l.wv.as_ref());
            v.extend([&l.wo, &l.gate, &l.up, &l.down]);
            if let Some(p) = &l.ple {
                v.extend([&p.gate, &p.proj]);
            }
        }
        v
    }
}

/// Check every tensor the spec needs, then upload them, the per-layer-embedding table last
/// (`Backend::upload_table`). `progress` gets (done, total) bytes.
pub fn load<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    f: &Arc<GgufFile>,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Weights<B::Weight>> {
    let names = ModelTensors::new(spec);
    names.check(spec, f)?;
    let total = f.data_bytes();
    let mut done = 0u64;
    let mut upload = |name: &str, table: bool| -> anyhow::Result<B::Weight> {
        let t = f
            .tensor(name)
            .ok_or_else(|| anyhow::anyhow!("missing tensor {name:?}"))?;
        let w = WeightRef {
            name,
            ty: t.ty,
            shape: &t.shape,
            file: f,
            range: {
                let start = (f.data_offset + t.offset) as usize;
                start..start + t.size as usize
            },
        };
        let w = if table {
            backend.upload_table(w)
        } else {
            backend.upload(w)
        }
        .map_err(|e| e.context(format!("uploading tensor {name:?} ({})", t.ty)))?;
        done += t.size;
        progress(done, total);
        Ok(w)
    };
    let mut up = |name: &str| upload(name, false);
    let mut opt = |name: &Option<String>| -> anyhow::Result<Option<B::Weight>> {
        name.as_deref().map(&mut up).transpose()
    };
    let rope_freqs = opt(&names.rope_freqs)?;
    let ple_rest = match &names.ple {
        Some(p) => Some((up(&p.model_proj)?, up(&p.proj_norm)?)),
        None => None,
    };
    let mut layers = Vec::with_capacity(spec.n_layer());
    for t in &names.layers {
        layers.push(load_layer(t, &mut up)?);
    }
    let token_embd = up(&names.token_embd)?;
    let output_norm = up(&names.output_norm)?;
    let output = if spec.tied_output {
        None
    } else {
        Some(up(&names.output)?)
    };
    let ple = match (&names.ple, ple_rest) {
        (Some(p), Some((model_proj, proj_norm))) => Some(PleWeights {
            token_embd: upload(&p.token_embd, true)?,
            model_proj,
            proj_norm,
        }),
        _ => None,
    };
    Ok(Weights {
        token_embd,
        output_norm,
        output,
        rope_freqs,
        ple,
        layers,
    })
}

fn load_layer<W>(
    t: &LayerTensors,
    up: &mut dyn FnMut(&str) -> anyhow::Result<W>,
) -> anyhow::Result<LayerWeights<W>> {
    let mut opt = |n: &Option<String>| -> anyhow::Result<Option<W>> {
        n.as_deref().map(&mut *up).transpose()
    };
    let (wk, wv, bq, bk, bv) = (
        opt(&t.wk)?,
        opt(&t.wv)?,
        opt(&t.bq)?,
        opt(&t.bk)?,
        opt(&t.bv)?,
    );
    let (q_norm, k_norm) = (opt(&t.q_norm)?, opt(&t.k_norm)?);
    let (post_attn_norm, post_ffn_norm, out_scale) = (
        opt(&t.post_attn_norm)?,
        opt(&t.post_ffn_norm)?,
        opt(&t.out_scale)?,
    );
    let ple = match (&t.ple_gate, &t.ple_proj, &t.ple_norm) {
        (Some(gate), Some(proj), Some(post_norm)) => Some(LayerPleWeights {
            gate: up(gate)?,
            proj: up(proj)?,
            post_norm: up(post_norm)?,
        }),
        _ => None,
    };
    Ok(LayerWeights {
        attn_norm: up(&t.attn_norm)?,
        wq: up(&t.wq)?,
        wk,
        wv,
        wo: up(&t.wo)?,
        bq,
        bk,
        bv,
        q_norm,
        k_norm,
        post_attn_norm,
        ffn_norm: up(&t.ffn_norm)?,
        gate: up(&t.gate)?,
        up: up(&t.up)?,
        down: up(&t.down)?,
        post_ffn_norm,
        ple,
        out_scale,
    })
}
