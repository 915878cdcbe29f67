//! Gemma 3 (specs/gemma.md §1): every 6th layer global, sliding window elsewhere, sandwich norms,
//! QK-norm, GELU-tanh FFN, sqrt(d) embedding scale, RoPE 10k on sliding layers and the file's base
//! (with linear scaling on 4B+) on global layers.

use kestrel_gguf::GgufFile;

use super::{linear_freq_scale, Common};
use crate::error::Result;
use crate::hparams::Hparams;
use crate::spec::{Arch, FfnKind, ModelSpec, RopeSpec};

pub fn spec(f: &GgufFile) -> Result<ModelSpec> {
    let hp = Hparams::new(f, "gemma3");
    let c = Common::read(&hp)?;
    let window = hp.opt_u("attention.sliding_window")?.filter(|&w| w > 0);
    let period = hp.opt_u("attention.sliding_window_pattern")?.unwrap_or(6);
    let global_rope = RopeSpec {
        base: hp.opt_f("rope.freq_base")?.unwrap_or(1_000_000.0),
        freq_scale: linear_freq_scale(&hp)?,
        n_rot: c.head_dim,
        neox: true,
        freq_factors: None,
    };
    let swa_rope = RopeSpec {
        base: hp.opt_f("rope.freq_base_swa")?.unwrap_or(10_000.0),
        freq_scale: 1.0,
        ..global_rope.clone()
    };
    // No GGUF key holds the attention scale: the 27B (62 layers) uses 1/sqrt(d/n_head).
    let attn_scale = if c.n_layer == 62 {
        1.0 / ((c.d_model / c.n_head[0]) as f32).sqrt()
    } else {
        1.0 / (c.head_dim as f32).sqrt()
    };
    let layers = (0..c.n_layer)
        .map(|i| {
            let sliding = window.is_some() && period > 0 && i % period < period - 1;
            let mut l = c.layer(
                i,
                if sliding {
                    swa_rope.clone()
                } else {
                    global_rope.clone()
                },
            );
            l.window = if sliding { window } else { None };
            l.qk_norm = true;
            l.sandwich_norms = true;
            l.ffn = FfnKind::GeluTanhGated;
            l.attn_scale = attn_scale;
            l.scale_q_first = true;
            l
        })
        .collect();
    let mut spec = c.spec(Arch::Gemma3, f, layers);
    spec.embed_scale = Some((spec.d_model as f32).sqrt());
    spec.final_logit_softcap = hp.opt_f("final_logit_softcapping")?;
    Ok(spec)
}
