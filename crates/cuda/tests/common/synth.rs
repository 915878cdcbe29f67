//! Synthetic models for the GPU tests: a GGUF written with `GgufWriter` from a shape, a quant
//! mix and random weights (see `random_weight`); token ids are fed straight to `Engine::step`.

use std::sync::Arc;

use kestrel_gguf::{GgmlType, GgufFile, MetaValue};

use super::{gguf, normal, random_weight, rng};

pub struct Shape {
    pub arch: &'static str,
    pub n_layer: usize,
    pub d: usize,
    pub n_head: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab: usize,
}

/// Types of (token_embd, output or None when tied) and, per layer, (q, k, v, o, gate, up, down).
pub struct Quant {
    pub embd: GgmlType,
    pub output: Option<GgmlType>,
    pub layer: Box<dyn Fn(usize) -> [GgmlType; 7]>,
}

pub fn synth(
    shape: &Shape,
    q: &Quant,
    extra_meta: &[(&str, MetaValue)],
    seed: u64,
) -> Arc<GgufFile> {
    use GgmlType::*;
    let a = shape.arch;
    let mut r = rng(seed);
    let key = |k: &str| format!("{a}.{k}");
    let mut meta: Vec<(String, MetaValue)> = vec![
        ("general.architecture".into(), a.into()),
        ("general.name".into(), format!("synthetic {a}").into()),
        (key("block_count"), (shape.n_layer as u32).into()),
        (key("embedding_length"), (shape.d as u32).into()),
        (key("attention.head_count"), (shape.n_head as u32).into()),
        (key("attention.head_count_kv"), (shape.n_kv as u32).into()),
        (key("attention.key_length"), (shape.head_dim as u32).into()),
        (
            key("attention.value_length"),
            (shape.head_dim as u32).into(),
        ),
        (key("feed_forward_length"), (shape.n_ff as u32).into()),
        (key("attention.layer_norm_rms_epsilon"), 1e-6f32.into()),
        (key("context_length"), 4096u32.into()),
        (key("rope.freq_base"), 1_000_000f32.into()),
    ];
    for (k, v) in extra_meta {
        meta.push((key(k), v.clone()));
    }
    let (d, qd, kvd, ff) = (
        shape.d,
        shape.n_head * shape.head_dim,
        shape.n_kv * shape.head_dim,
        shape.n_ff,
    );
    let mut tensors = Vec::new();
    let mut mat =
        |name: String, ty: GgmlType, cols: usize, rows: usize, r: &mut rand::rngs::StdRng| {
            let w = random_weight(ty, rows, cols, 1.0 / (cols as f32).sqrt(), r);
            tensors.push((name, vec![cols as u64, rows as u64], ty, w));
        };
    mat("token_embd.weight".into(), q.embd, d, shape.vocab, &mut r);
    if let Some(t) = q.output {
        mat("output.weight".into(), t, d, shape.vocab, &mut r);
    }
    for i in 0..shape.n_layer {
        let [tq, tk, tv, to, tg, tu, td] = (q.layer)(i);
        mat(format!("blk.{i}.attn_q.weight"), tq, d, qd, &mut r);
        mat(format!("blk.{i}.attn_k.weight"), tk, d, kvd, &mut r);
        mat(format!("blk.{i}.attn_v.weight"), tv, d, kvd, &mut r);
        mat(format!("blk.{i}.attn_output.weight"), to, qd, d, &mut r);
        mat(format!("blk.{i}.ffn_gate.weight"), tg, d, ff, &mut r);
        mat(format!("blk.{i}.ffn_up.weight"), tu, d, ff, &mut r);
        mat(format!("blk.{i}.ffn_down.weight"), td, ff, d, &mut r);
    }
    let mut vec1 = |name: String, n: usize, base: f32, scale: f32, r: &mut rand::rngs::StdRng| {
        let v: Vec<f32> = (0..n).map(|_| base + scale * normal(r)).collect();
        tensors.push((
            name,
            vec![n as u64],
            F32,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
    };
    vec1("output_norm.weight".into(), d, 1.0, 0.1, &mut r);
    for i in 0..shape.n_layer {
        vec1(format!("blk.{i}.attn_norm.weight"), d, 1.0, 0.1, &mut r);
        vec1(format!("blk.{i}.ffn_norm.weight"), d, 1.0, 0.1, &mut r);
        match a {
            "qwen2" => {
                vec1(format!("blk.{i}.attn_q.bias"), qd, 0.0, 0.3, &mut r);
                vec1(format!("blk.{i}.attn_k.bias"), kvd, 0.0, 0.3, &mut r);
                vec1(format!("blk.{i}.attn_v.bias"), kvd, 0.0, 0.3, &mut r);
            }
            "gemma3" => {
                vec1(
                    format!("blk.{i}.attn_q_norm.weight"),
                    shape.head_dim,
                    1.0,
                    0.1,
                    &mut r,
                );
                vec1(
                    format!("blk.{i}.attn_k_norm.weight"),
                    shape.head_dim,
                    1.0,
                    0.1,
                    &mut r,
                );
                vec1(
                    format!("blk.{i}.post_attention_norm.weight"),
                    d,
                    1.0,
                    0.1,
                    &mut r,
                );
                vec1(format!("blk.{i}.post_ffw_norm.weight"), d, 1.0, 0.1, &mut r);
            }
            _ => {}
        }
    }
    if a == "llama" {
        let n_rot = shape.head_dim / 2;
        let f: Vec<f32> = (0..n_rot / 2).map(|i| 1.0 + 0.5 * i as f32).collect();
        tensors.push((
            "rope_freqs.weight".into(),
            vec![(n_rot / 2) as u64],
            F32,
            f.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
    }
    let meta_refs: Vec<(&str, MetaValue)> =
        meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    gguf(&meta_refs, tensors)
}

pub fn tiny(arch: &'static str, n_kv: usize) -> Shape {
    Shape {
        arch,
        n_layer: 3,
        d: 256,
        n_head: 4,
        n_kv,
        head_dim: 64,
        n_ff: 512,
        vocab: 384,
    }
}

/// The synthetic models the GPU tests run, with their vocabulary size. Every matmul type
/// appears somewhere across the three tiny ones: qwen2 (QKV bias, NeoX RoPE), gemma3 (sandwich
/// norms, QK-norm, GELU, sliding window 8 every other layer, softcap 30, tied output, embedding
/// scale) and llama (adjacent-pair RoPE over half the head with freq factors, MQA). The two
/// larger ones have the real shapes and quant mixes of qwen2.5-coder-0.5b (Q4_K_M) and
/// gemma3-270m (head_dim 256, 262144 tokens).
pub fn tiny_models() -> Vec<(&'static str, Arc<GgufFile>, usize)> {
    use GgmlType::*;
    let qwen = Quant {
        embd: Q8_0,
        output: Some(Q6_K),
        layer: Box::new(|i| match i {
            0 => [Q4_K, Q5_0, Q8_0, Q6_K, Q4_K, Q5_K, Q6_K],
            1 => [Q2_K, Q3_K, Q4_0, Q4_1, Q5_1, Q8_0, Q5_0],
            _ => [F16, BF16, F32, Q8_0, Q4_K, Q6_K, Q3_K],
        }),
    };
    let gemma = Quant {
        embd: Q6_K,
        output: None,
        layer: Box::new(|i| match i {
            0 => [Q5_0, Q5_0, Q8_0, Q4_K, Q5_0, Q5_0, Q6_K],
            1 => [Q6_K, Q4_K, Q5_K, Q2_K, Q3_K, Q4_1, Q4_K],
            _ => [Q8_0, Q4_0, Q5_1, Q5_0, Q8_0, Q8_0, Q8_0],
        }),
    };
    let gemma_meta = [
        ("attention.sliding_window", MetaValue::from(8u32)),
        ("attention.sliding_window_pattern", MetaValue::from(2u32)),
        ("final_logit_softcapping", MetaValue::from(30.0f32)),
    ];
    let llama = Quant {
        embd: F16,
        output: Some(Q8_0),
        layer: Box::new(|i| match i {
            0 => [Q4_0, Q4_1, Q5_1, Q5_K, Q2_K, Q3_K, Q5_K],
            1 => [Q4_K, Q4_K, Q6_K, Q4_K, Q4_K, Q4_K, Q6_K],
            _ => [Q5_0, Q5_0, Q5_0, Q5_0, Q5_0, Q5_0, Q5_0],
        }),
    };
    let llama_meta = [
        ("rope.dimension_count", MetaValue::from(32u32)),
        ("rope.freq_base", MetaValue::from(10_000f32)),
    ];
    vec![
        ("tiny qwen2", synth(&tiny("qwen2", 2), &qwen, &[], 11), 384),
        (
            "tiny gemma3",
            synth(&tiny("gemma3", 1), &gemma, &gemma_meta, 12),
            384,
        ),
        (
            "tiny llama",
            synth(&tiny("llama", 1), &llama, &llama_meta, 13),
            384,
        ),
    ]
}

pub fn real_shaped_models() -> Vec<(&'static str, Arc<GgufFile>, usize)> {
    use GgmlType::*;
    let qwen_shape = Shape {
        arch: "qwen2",
        n_layer: 24,
        d: 896,
        n_head: 14,
        n_kv: 2,
        head_dim: 64,
        n_ff: 4864,
        vocab: 151936,
    };
    let qwen = Quant {
        embd: Q5_0,
        output: Some(Q8_0),
        layer: Box::new(|i| {
            let (v, down) = if i % 2 == 0 {
                (Q8_0, Q6_K)
            } else {
                (Q5_0, Q4_K)
            };
            [Q5_0, Q5_0, v, Q5_0, Q5_0, Q5_0, down]
        }),
    };
    let gemma_shape = Shape {
        arch: "gemma3",
        n_layer: 18,
        d: 640,
        n_head: 4,
        n_kv: 1,
        head_dim: 256,
        n_ff: 2048,
        vocab: 262144,
    };
    let gemma = Quant {
        embd: Q8_0,
        output: None,
        layer: Box::new(|i| {
            let (v, down) = if i % 2 == 0 {
                (Q8_0, Q6_K)
            } else {
                (Q5_0, Q4_K)
            };
            [Q5_0, Q5_0, v, Q4_K, Q5_0, Q5_0, down]
        }),
    };
    vec![
        (
            "qwen2.5-0.5b-shaped",
            synth(&qwen_shape, &qwen, &[], 21),
            qwen_shape.vocab,
        ),
        (
            "gemma3-270m-shaped",
            synth(
                &gemma_shape,
                &gemma,
                &[("attention.sliding_window", MetaValue::from(16u32))],
                22,
            ),
            gemma_shape.vocab,
        ),
    ]
}
