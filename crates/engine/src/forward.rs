//! The one generic decoder. Every architecture, prompt prefill, single-token decode and
//! multi-sequence steps all run through `forward`: a walk over the layers driven by `LayerSpec`.

use kestrel_model::ModelSpec;

use crate::backend::{AttnGeom, Backend};
use crate::weights::{PleWeights, Weights};

/// Numerical bisection aid: with `KESTREL_DUMP=DIR`, every named intermediate is written to
/// `DIR/<name>-<layer>.bin` (raw little-endian f32), named after llama.cpp's eval-callback
/// tensors so the two engines can be compared op by op. Off (and free) otherwise.
fn dump<B: Backend>(b: &B, name: &str, il: usize, t: &B::Tensor) {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    if let Some(dir) = DIR.get_or_init(|| std::env::var_os("KESTREL_DUMP").map(Into::into)) {
        let bytes: Vec<u8> = b.read(t).iter().flat_map(|x| x.to_le_bytes()).collect();
        if let Err(e) = std::fs::write(dir.join(format!("{name}-{il}.bin")), bytes) {
            eprintln!("KESTREL_DUMP: cannot write {name}-{il}: {e}");
        }
    }
}

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
    // Per-layer embeddings (Gemma 4): one P-wide input per token and layer, `[n_tokens, L·P]`.
    let ple = match (&spec.ple, &w.ple) {
        (Some(p), Some(pw)) => Some(ple_inputs(b, spec, p.dim, pw, &x, step, n_tokens)),
        _ => None,
    };
    let mut h = b.alloc(n_tokens, d);
    let mut o = b.alloc(n_tokens, d);

    for (il, (l, lw)) in spec.layers.iter().zip(&w.layers).enumerate() {
        dump(b, "inp", il, &x);
        b.rms_norm(&x, Some(&lw.attn_norm), d, eps, &mut h);
        dump(b, "attn_norm", il, &h);

        // q, k and v of one input in one `matmuls` call (the CUDA backend fuses the launches).
        let mut q = b.alloc(n_tokens, l.q_dim());
        let mut kv_proj = lw
            .wk
            .as_ref()
            .map(|_| (b.alloc(n_tokens, l.kv_dim()), b.alloc(n_tokens, l.kv_dim())));
        {
            let mut jobs = vec![(&lw.wq, &mut q)];
            if let (Some(wk), Some((k, v))) = (&lw.wk, kv_proj.as_mut()) {
                jobs.push((wk, k));
                if let Some(wv) = &lw.wv {
                    jobs.push((wv, v));
                }
            }
            b.matmuls(&h, &mut jobs);
        }
        dump(b, "Qcur_mm", il, &q);
        if let Some(bq) = &lw.bq {
            b.add_bias(&mut q, bq);
        }
        if let Some(qn) = &lw.q_norm {
            let qin = std::mem::replace(&mut q, b.alloc(n_tokens, l.q_dim()));
            b.rms_norm(&qin, Some(qn), l.head_dim, eps, &mut q);
        }
        b.rope(&mut q, l.head_dim, &l.rope, w.rope_freqs.as_ref(), step);

        if let Some((mut k, mut v)) = kv_proj {
            if let Some(bk) = &lw.bk {
                b.add_bias(&mut k, bk);
            }
            if lw.wv.is_none() {
                b.copy(&k, &mut v); // k_eq_v: V is the raw K projection
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
            dump(b, "Kcur_rope", il, &k);
            dump(b, "Vcur", il, &v);
            let cache = kv[il]
                .as_mut()
                .expect("a layer with its own K/V has a cache");
            b.kv_write(&k, &v, cache, step);
        }

        let q_first = l.scale_q_first && l.attn_scale != 1.0;
        let geom = AttnGeom {
            n_head: l.n_head,
            n_kv_head: l.n_kv_head,
            head_dim: l.head_dim,
            window: l.window,
            scale: if q_first { 1.0 } else { l.attn_scale },
        };
        let cache = kv[l.cache_layer(il)]
            .as_ref()
            .expect("source layer has a cache");
        let mut a = b.alloc(n_tokens, l.q_dim());
        dump(b, "Qcur_rope", il, &q);
        if q_first {
            b.scale(&mut q, l.attn_scale);
        }
        b.attention(&q, cache, geom, step, &mut a);
        dump(b, "kqv_out", il, &a);
        drop(q);
        b.matmul(&lw.wo, &a, &mut o);
        dump(b, "attn_out", il, &o);
        drop(a);
        if let Some(pn) = &lw.post_attn_norm {
            b.add_rms_norm(&mut x, &o, Some(pn), d, eps, None, &mut h);
        } else {
            b.add(&mut x, &o);
        }

        dump(b, "ffn_inp", il, &x);
        b.rms_norm(&x, Some(&lw.ffn_norm), d, eps, &mut h);
        dump(b, "ffn_norm", il, &h);
        let mut g = b.alloc(n_tokens, l.n_ff);
        let mut u = b.alloc(n_tokens, l.n_ff);
        b.matmuls(&h, &mut [(&lw.gate, &mut g), (&lw.up, &mut u)]);
        dump(b, "ffn_gate", il, &g);
        dump(b, "ffn_up", il, &u);
        b.gated_act(&mut g, &u, l.ffn);
        dump(b, "ffn_act", il, &g);
        drop(u);
        b.matmul(&lw.down, &g, &mut o);
        dump(b, "ffn_out", il, &o);
        // The layer's output scale rides on its last post-norm residual (one launch on CUDA).
        let ple_here = ple.is_some() && lw.ple.is_some();
        let mut out_scale = lw.out_scale.as_ref();
        if let Some(pn) = &lw.post_ffn_norm {
            let s = if ple_here { None } else { out_scale.take() };
            b.add_rms_norm(&mut x, &o, Some(pn), d, eps, s, &mut h);
        } else {
            b.add(&mut x, &o);
        }
        if let (Some(ple), Some(pw)) = (&ple, &lw.ple) {
            // x += post_norm(proj(act(inp_gate · x) * this layer's PLE slice))
            let p = spec.ple.as_ref().map_or(0, |p| p.dim);
            let mut gate = b.alloc(n_tokens, p);
            b.matmul(&pw.gate, &x, &mut gate);
            let mut slice = b.alloc(n_tokens, p);
            b.copy_cols(ple, il * p, &mut slice);
            b.gated_act(&mut gate, &slice, l.ffn);
            b.matmul(&pw.proj, &gate, &mut o);
            let s = out_scale.take();
            b.add_rms_norm(&mut x, &o, Some(&pw.post_norm), d, eps, s, &mut h);
        }
        if let Some(s) = out_scale {
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

/// Gemma 4's per-layer inputs (specs/gemma.md §3.2), from the scaled embeddings `x0`:
/// `(rms_norm_P(W_proj·x0 / sqrt(d)) · proj_norm + table[token] · sqrt(P)) / sqrt(2)`,
/// the norm taken over each layer's P-slice.
fn ple_inputs<B: Backend>(
    b: &B,
    spec: &ModelSpec,
    p: usize,
    w: &PleWeights<B::Weight>,
    x0: &B::Tensor,
    step: &B::Step,
    n_tokens: usize,
) -> B::Tensor {
    let width = p * spec.n_layer();
    let mut tok = b.alloc(n_tokens, width);
    b.embed(&w.token_embd, step, (p as f32).sqrt(), &mut tok);
    let mut proj = b.alloc(n_tokens, width);
    b.matmul(&w.model_proj, x0, &mut proj);
    b.scale(&mut proj, 1.0 / (spec.d_model as f32).sqrt());
    let mut ple = b.alloc(n_tokens, width);
    b.rms_norm(&proj, Some(&w.proj_norm), p, spec.norm_eps, &mut ple);
    b.add(&mut ple, &tok);
    b.scale(&mut ple, std::f32::consts::FRAC_1_SQRT_2);
    ple
}
