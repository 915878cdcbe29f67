//! Gemma 4 (specs/gemma.md §3): sliding and global layers from a per-layer bool pattern, each
//! with its own head_dim (`key_length_swa` / `key_length`), KV heads (scalar or array) and RoPE;
//! proportional RoPE on global layers through `rope_freqs` (all `n_rot` dims, pairs (i, i+n_rot/2),
//! most of them with a 1e30 factor, i.e. not rotated); KV sharing in the tail layers; V = raw K
//! on global layers that lack `attn_v`; weightless V norm; attention scale 1.0; sandwich norms;
//! GELU-tanh FFN (per-layer width on E2B); per-layer embeddings (PLE); `layer_output_scale`;
//! final logit softcap; tied embeddings. The MoE variant (26B-A4B) is refused for now.

use kestrel_gguf::GgufFile;

use super::Common;
use crate::error::{ModelError, Result};
use crate::hparams::{check_range, Hparams};
use crate::spec::{Arch, FfnKind, ModelSpec, PleSpec, RopeSpec};

pub fn spec(f: &GgufFile) -> Result<ModelSpec> {
    let hp = Hparams::new(f, "gemma4");
    refuse_moe(&hp)?;
    let c = Common::read(&hp)?;
    let n = c.n_layer;

    let hd_global = hp.u("attention.key_length")?;
    let hd_swa = check_range(
        "attention.key_length_swa",
        hp.opt_u("attention.key_length_swa")?.unwrap_or(hd_global),
        1024,
    )?;
    for (k, v, want) in [
        (
            "attention.value_length",
            hp.opt_u("attention.value_length")?,
            hd_global,
        ),
        (
            "attention.value_length_swa",
            hp.opt_u("attention.value_length_swa")?,
            hd_swa,
        ),
    ] {
        if v.is_some_and(|v| v != want) {
            return Err(bad(
                k,
                format!("{} differs from the key length {want}", v.unwrap_or(0)),
            ));
        }
    }
    let sliding = hp
        .per_layer_bool("attention.sliding_window_pattern", n)?
        .ok_or_else(|| missing("attention.sliding_window_pattern"))?;
    let window = check_range(
        "attention.sliding_window",
        hp.u("attention.sliding_window")?,
        1 << 24,
    )?;

    let global_rope = RopeSpec {
        base: hp.opt_f("rope.freq_base")?.unwrap_or(1_000_000.0),
        freq_scale: 1.0,
        n_rot: hp.opt_u("rope.dimension_count")?.unwrap_or(hd_global),
        neox: true,
        // Proportional RoPE: the factors leave most pairs unrotated (1e30), see §3.3.
        freq_factors: f.tensor("rope_freqs.weight").map(|t| t.name.clone()),
    };
    let swa_rope = RopeSpec {
        base: hp.opt_f("rope.freq_base_swa")?.unwrap_or(10_000.0),
        freq_scale: 1.0,
        n_rot: hp.opt_u("rope.dimension_count_swa")?.unwrap_or(hd_swa),
        neox: true,
        freq_factors: None,
    };
    if sliding.iter().any(|&s| !s) && global_rope.freq_factors.is_none() {
        return Err(ModelError::MissingTensor("rope_freqs.weight".into()));
    }

    let n_shared = hp.opt_u("attention.shared_kv_layers")?.unwrap_or(0);
    let kv_sources = kv_sources(&sliding, n_shared)?;
    let ple_dim = hp.opt_u("embedding_length_per_layer_input")?.unwrap_or(0);

    let mut layers = Vec::with_capacity(n);
    for (i, &swa) in sliding.iter().enumerate() {
        let mut l = c.layer(
            i,
            if swa {
                swa_rope.clone()
            } else {
                global_rope.clone()
            },
        );
        l.head_dim = if swa { hd_swa } else { hd_global };
        if l.rope.n_rot > l.head_dim || !l.rope.n_rot.is_multiple_of(2) {
            return Err(bad(
                "rope.dimension_count",
                format!(
                    "layer {i}: n_rot {} for head_dim {}",
                    l.rope.n_rot, l.head_dim
                ),
            ));
        }
        l.window = swa.then_some(window);
        l.kv_source = kv_sources[i];
        l.qk_norm = true;
        l.v_norm = true;
        l.k_eq_v = l.kv_source.is_none() && f.tensor(&format!("blk.{i}.attn_v.weight")).is_none();
        l.attn_scale = 1.0;
        l.sandwich_norms = true;
        l.ffn = FfnKind::GeluTanhGated;
        l.ple = ple_dim > 0;
        l.layer_output_scale = f
            .tensor(&format!("blk.{i}.layer_output_scale.weight"))
            .is_some();
        layers.push(l);
    }
    // A layer reading another's cache must see K/V of its own shape.
    for (i, l) in layers.iter().enumerate() {
        if let Some(s) = l.kv_source {
            let src = &layers[s];
            if (src.n_kv_head, src.head_dim) != (l.n_kv_head, l.head_dim) {
                return Err(bad(
                    "attention.shared_kv_layers",
                    format!(
                        "layer {i} ({} kv heads of {}) reads layer {s}'s cache ({} of {})",
                        l.n_kv_head, l.head_dim, src.n_kv_head, src.head_dim
                    ),
                ));
            }
        }
    }

    let mut spec = c.spec(Arch::Gemma4, f, layers);
    spec.embed_scale = Some((spec.d_model as f32).sqrt());
    spec.final_logit_softcap = hp.opt_f("final_logit_softcapping")?.filter(|&c| c > 0.0);
    spec.ple = (ple_dim > 0).then_some(PleSpec { dim: ple_dim });
    Ok(spec)
}

/// The layer whose K/V each layer reads (None: its own). The last `n_shared` layers compute no
/// K/V: each reads the last earlier layer of its own kind (sliding or global) that does — HF's
/// rule. llama.cpp states it as `first_shared - 2` for sliding and `first_shared - 1` for global
/// layers; a file where the two disagree is refused rather than guessed at.
pub fn kv_sources(sliding: &[bool], n_shared: usize) -> Result<Vec<Option<usize>>> {
    let n = sliding.len();
    if n_shared == 0 {
        return Ok(vec![None; n]);
    }
    if n_shared >= n {
        return Err(bad(
            "attention.shared_kv_layers",
            format!("{n_shared} shared layers of {n}: no layer computes K/V"),
        ));
    }
    let first_shared = n - n_shared;
    let mut out = vec![None; n];
    for l in first_shared..n {
        let hf = (0..first_shared).rev().find(|&s| sliding[s] == sliding[l]);
        let llama_cpp = first_shared.checked_sub(if sliding[l] { 2 } else { 1 });
        if hf.is_none() || hf != llama_cpp {
            return Err(bad(
                "attention.shared_kv_layers",
                format!(
                    "layer {l}: the last non-shared layer of its kind is {hf:?}, but llama.cpp's rule names {llama_cpp:?}"
                ),
            ));
        }
        out[l] = hf;
    }
    Ok(out)
}

/// 26B-A4B: an expert count, or expert / router tensors.
fn refuse_moe(hp: &Hparams) -> Result<()> {
    let experts = hp.opt_u("expert_count")?.unwrap_or(0);
    let moe_tensor = hp.f.tensors.iter().find(|t| {
        ["ffn_gate_exps", "ffn_gate_up_exps", "ffn_gate_inp"]
            .iter()
            .any(|s| t.name.contains(&format!(".{s}.")))
    });
    if experts > 0 || moe_tensor.is_some() {
        let why = match moe_tensor {
            Some(t) => format!("tensor {}", t.name),
            None => format!("gemma4.expert_count = {experts}"),
        };
        return Err(ModelError::Unsupported(format!(
            "the Gemma 4 mixture-of-experts variant (26B-A4B; {why})"
        )));
    }
    Ok(())
}

fn bad(key: &str, reason: String) -> ModelError {
    ModelError::BadParam {
        key: format!("gemma4.{key}"),
        reason,
    }
}

fn missing(key: &str) -> ModelError {
    ModelError::Gguf(kestrel_gguf::GgufError::MissingKey(format!("gemma4.{key}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize, period: usize) -> Vec<bool> {
        (0..n).map(|i| i % period != period - 1).collect()
    }

    #[test]
    fn kv_sharing_of_e2b_and_e4b() {
        // E2B: 35 layers, 4:1, 20 shared (first shared 15): sliding reuse 13, global 14.
        let s = kv_sources(&pattern(35, 5), 20).unwrap();
        assert!(s[..15].iter().all(Option::is_none));
        for (l, src) in s.iter().enumerate().skip(15) {
            assert_eq!(*src, Some(if l % 5 == 4 { 14 } else { 13 }), "layer {l}");
        }
        // E4B: 42 layers, 5:1, 18 shared (first shared 24): sliding reuse 22, global 23.
        let s = kv_sources(&pattern(42, 6), 18).unwrap();
        for (l, src) in s.iter().enumerate().skip(24) {
            assert_eq!(*src, Some(if l % 6 == 5 { 23 } else { 22 }), "layer {l}");
        }
        assert_eq!(kv_sources(&pattern(12, 6), 0).unwrap(), vec![None; 12]);
    }

    #[test]
    fn kv_sharing_rules_must_agree() {
        // Layers 3 (sliding) and 4 (global) end the non-shared part: both rules agree.
        assert!(kv_sources(&[true, true, true, true, false, true, false], 2).is_ok());
        // Global layer right before a sliding one: the last sliding layer is 4, but
        // llama.cpp says first_shared - 2 = 3 for a sliding consumer.
        let e = kv_sources(&[true, true, true, false, true, true, false], 2).unwrap_err();
        assert!(e.to_string().contains("llama.cpp"), "{e}");
        // No layer of the consumer's kind before the shared tail.
        assert!(kv_sources(&[true, true, true, false], 1).is_err());
        assert!(kv_sources(&[true, false], 2).is_err());
    }
}
