//! Llama, Qwen2 and Qwen3: one family, differing in RoPE pairing, QKV bias and QK-norm.

use kestrel_gguf::GgufFile;

use super::{linear_freq_scale, Common};
use crate::error::Result;
use crate::hparams::Hparams;
use crate::spec::{Arch, ModelSpec, RopeSpec};

pub fn spec(f: &GgufFile, arch: Arch) -> Result<ModelSpec> {
    let hp = Hparams::new(f, arch.name());
    let c = Common::read(&hp)?;
    let rope = RopeSpec {
        base: hp.opt_f("rope.freq_base")?.unwrap_or(10_000.0),
        freq_scale: linear_freq_scale(&hp)?,
        n_rot: hp.opt_u("rope.dimension_count")?.unwrap_or(c.head_dim),
        // Llama GGUFs have Q/K rows permuted for adjacent-pair rotation; Qwen uses NeoX pairs.
        neox: arch != Arch::Llama,
        freq_factors: f.tensor("rope_freqs.weight").map(|t| t.name.clone()),
    };
    let layers = (0..c.n_layer)
        .map(|i| {
            let mut l = c.layer(i, rope.clone());
            l.qkv_bias = arch == Arch::Qwen2;
            l.qk_norm = arch == Arch::Qwen3;
            l
        })
        .collect();
    Ok(c.spec(arch, f, layers))
}
