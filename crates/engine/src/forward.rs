//! The one generic decoder. Every architecture, prompt prefill, single-token decode and
//! multi-sequence steps all run through `forward`: a walk over the layers driven by `LayerSpec`.

use kestrel_model::ModelSpec;

use crate::backend::{AttnGeom, Backend};
use crate::weights::Weights;

/// Run one step. Returns logits `[step.logit_rows.len(), n_vocab]` on the device.
pub fn forward<B: Backend>(
    b: &B,
    spec: &ModelSpec,
    w: &Weights<B::Weight>,
    kv: &mut [Option<B::Kv>],
    step: &B::Step,
    n_tokens: usize,
    n_logits: usize,
) -> B::Tensor {
    let d = spec.d_model;
    let eps = spec.norm_eps;
    let mut x = b.alloc(n_tokens, d);
    b.embed(&w.token_embd, step, spec.embed_scale.unwrap_or(1.0), &mut x);
    let mut h = b.alloc(n_tokens, d);
    let mut o = b.alloc(n_tokens, d);

    for (il, (l, lw)) in spec.layers.iter().zip(&w.layers).enumerate() {
        b.rms_norm(&x, Some(&lw.attn_norm), d, eps, &mut h);

        let mut q = b.alloc(n_tokens, l.q_dim());
        b.matmul(&lw.wq, &h, &mut q);
        if let Some(bq) = &lw.bq {
            b.add_bias(&mut q, bq);
        }
        if let Some(qn) = &lw.q_norm {
            let qin = std::mem::replace(&mut q, b.alloc(n_tokens, l.q_dim()));
            b.rms_norm(&qin, Some(qn), l.head_dim, eps, &mut q);
        }
        b.rope(&mut q, l.head_dim, &l.rope, w.rope_freqs.as_ref(), step);

        if let Some(wk) = &lw.wk {
            let mut k = b.alloc(n_tokens, l.kv_dim());
            b.matmul(wk, &h, &mut k);
            if let Some(bk) = &lw.bk {
                b.add_bias(&mut k, bk);
            }
            let mut v = b.alloc(n_tokens, l.kv_dim());
            match &lw.wv {
                Some(wv) => b.matmul(wv, &h, &mut v),
                None => b.copy(&k, &mut v), // k_eq_v: V is the raw K projection
            }
            if let Some(bv) = &lw.bv {
                b.add_bias(&mut v, bv);
            }
            if let Some(kn) = &lw.k_norm {
                let kin = std::mem::replace(&mut k, b.alloc(n_tokens, l.kv_dim()));
                b.rms_norm(&kin, Some(kn), l.head_dim, eps, &mut k);
            }
            if l.v_norm {
                let vin = std::mem::replace(&mut v, b.alloc(n_tokens, l.kv_dim()));
                b.rms_norm(&vin, None, l.head_dim, eps, &mut v);
            }
            b.rope(&mut k, l.head_dim, &l.rope, w.rope_freqs.as_ref(), step);
            let cache = kv[il].as_mut().expect("a layer with its own K/V has a cache");
            b.kv_write(&k, &v, cache, step);
        }

        let geom = AttnGeom {
            n_head: l.n_head,
            n_kv_head: l.n_kv_head,
            head_dim: l.head_dim,
            window: l.window,
            scale: l.attn_scale,
        };
        let cache = kv[l.cache_layer(il)].as_ref().expect("source layer has a cache");
        let mut a = b.alloc(n_tokens, l.q_dim());
        b.attention(&q, cache, geom, step, &mut a);
        drop(q);
        b.matmul(&lw.wo, &a, &mut o);
        drop(a);
        if let Some(pn) = &lw.post_attn_norm {
            b.rms_norm(&o, Some(pn), d, eps, &mut h);
            b.add(&mut x, &h);
        } else {
            b.add(&mut x, &o);
        }

        b.rms_norm(&x, Some(&lw.ffn_norm), d, eps, &mut h);
        let mut g = b.alloc(n_tokens, l.n_ff);
        let mut u = b.alloc(n_tokens, l.n_ff);
        b.matmul(&lw.gate, &h, &mut g);
        b.matmul(&lw.up, &h, &mut u);
        b.gated_act(&mut g, &u, l.ffn);
        drop(u);
        b.matmul(&lw.down, &g, &mut o);
        if let Some(pn) = &lw.post_ffn_norm {
            b.rms_norm(&o, Some(pn), d, eps, &mut h);
            b.add(&mut x, &h);
        } else {
            b.add(&mut x, &o);
        }
        if let Some(s) = &lw.out_scale {
            b.scale_by(&mut x, s);
        }
    }

    let mut last = b.alloc(n_logits, d);
    b.gather_logit_rows(&x, step, &mut last);
    let mut normed = b.alloc(n_logits, d);
    b.rms_norm(&last, Some(&w.output_norm), d, eps, &mut normed);
    let mut logits = b.alloc(n_logits, spec.n_vocab);
    b.matmul(w.output(), &normed, &mut logits);
    if let Some(cap) = spec.final_logit_softcap {
        b.softcap(&mut logits, cap);
    }
    logits
}
