//! Specs of the real models, and clear errors for files that do not describe a usable model.

use std::path::PathBuf;

use kestrel_gguf::{GgufFile, GgufWriter};
use kestrel_model::{spec_from_gguf, Arch, FfnKind, ModelError, ModelTensors};

fn model(name: &str) -> Option<GgufFile> {
    let home = std::env::var_os("KESTREL_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/kestrel"));
    let p = home.join("models").join(format!("{name}.gguf"));
    if !p.exists() {
        eprintln!("skipping: {} not found", p.display());
        return None;
    }
    Some(GgufFile::open(p).unwrap())
}

#[test]
fn gemma3_270m_spec() {
    let Some(f) = model("gemma3-270m") else {
        return;
    };
    let s = spec_from_gguf(&f).unwrap();
    assert_eq!(s.arch, Arch::Gemma3);
    assert_eq!((s.n_layer(), s.d_model, s.n_vocab), (18, 640, 262144));
    assert!(s.tied_output);
    assert_eq!(s.embed_scale, Some(640f32.sqrt()));
    for (i, l) in s.layers.iter().enumerate() {
        let global = i % 6 == 5;
        assert_eq!(l.window, if global { None } else { Some(512) }, "layer {i}");
        assert_eq!(l.rope.base, if global { 1e6 } else { 1e4 }, "layer {i}");
        assert_eq!(l.rope.freq_scale, 1.0);
        assert!(l.rope.neox && l.qk_norm && l.sandwich_norms);
        assert_eq!((l.n_head, l.n_kv_head, l.head_dim), (4, 1, 256));
        assert_eq!(l.attn_scale, 1.0 / 16.0);
        assert_eq!(l.ffn, FfnKind::GeluTanhGated);
    }
    ModelTensors::new(&s).check(&s, &f).unwrap();
}

#[test]
fn qwen2_5_coder_0_5b_spec() {
    let Some(f) = model("qwen2.5-coder-0.5b") else {
        return;
    };
    let s = spec_from_gguf(&f).unwrap();
    assert_eq!(s.arch, Arch::Qwen2);
    assert_eq!((s.n_layer(), s.d_model, s.n_vocab), (24, 896, 151936));
    assert!(!s.tied_output);
    let l = &s.layers[0];
    assert_eq!(
        (l.n_head, l.n_kv_head, l.head_dim, l.n_ff),
        (14, 2, 64, 4864)
    );
    assert!(l.qkv_bias && l.rope.neox && !l.qk_norm && l.window.is_none());
    assert_eq!(l.rope.base, 1e6);
    ModelTensors::new(&s).check(&s, &f).unwrap();
}

fn tiny(arch: &str, drop_tensor: Option<&str>, bad_shape: bool) -> GgufFile {
    let mut w = GgufWriter::new();
    w.add_meta("general.architecture", arch);
    for (k, v) in [
        ("block_count", 1u32),
        ("embedding_length", 32),
        ("feed_forward_length", 64),
        ("attention.head_count", 4),
        ("attention.head_count_kv", 2),
        ("context_length", 128),
    ] {
        w.add_meta(&format!("{arch}.{k}"), v);
    }
    w.add_meta(&format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-6f32);
    let (d, ff, kv, vocab) = (32u64, 64u64, 16u64, 8u64);
    let mut add = |name: &str, shape: &[u64]| {
        if Some(name) == drop_tensor {
            return;
        }
        let n: u64 = shape.iter().product();
        w.add_f32(name, shape, &vec![0.5; n as usize]).unwrap();
    };
    add("token_embd.weight", &[d, vocab]);
    add("output_norm.weight", &[d]);
    add("blk.0.attn_norm.weight", &[d]);
    add(
        "blk.0.attn_q.weight",
        &[d, if bad_shape { d + 1 } else { d }],
    );
    add("blk.0.attn_k.weight", &[d, kv]);
    add("blk.0.attn_v.weight", &[d, kv]);
    add("blk.0.attn_output.weight", &[d, d]);
    add("blk.0.ffn_norm.weight", &[d]);
    add("blk.0.ffn_gate.weight", &[d, ff]);
    add("blk.0.ffn_up.weight", &[d, ff]);
    add("blk.0.ffn_down.weight", &[ff, d]);
    GgufFile::from_bytes(w.to_bytes()).unwrap()
}

#[test]
fn a_well_formed_tiny_llama_checks_out() {
    let f = tiny("llama", None, false);
    let s = spec_from_gguf(&f).unwrap();
    assert!(s.tied_output && !s.layers[0].rope.neox);
    ModelTensors::new(&s).check(&s, &f).unwrap();
}

#[test]
fn errors_name_the_problem() {
    let f = tiny("mamba9", None, false);
    let e = spec_from_gguf(&f).unwrap_err();
    assert!(
        matches!(e, ModelError::UnknownArch(ref a) if a == "mamba9"),
        "{e}"
    );

    let f = tiny("llama", Some("blk.0.ffn_up.weight"), false);
    let s = spec_from_gguf(&f).unwrap();
    let e = ModelTensors::new(&s).check(&s, &f).unwrap_err();
    assert!(e.to_string().contains("blk.0.ffn_up.weight"), "{e}");

    let f = tiny("llama", None, true);
    let s = spec_from_gguf(&f).unwrap();
    let e = ModelTensors::new(&s).check(&s, &f).unwrap_err();
    assert!(
        e.to_string().contains("blk.0.attn_q.weight") && e.to_string().contains("shape"),
        "{e}"
    );

    let f = tiny("gemma4", None, false);
    assert!(spec_from_gguf(&f)
        .unwrap_err()
        .to_string()
        .contains("gemma4"));
}

fn fixture(name: &str) -> GgufFile {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    GgufFile::open(p).unwrap()
}

/// The oracle fixtures of tools/gemma_oracle.py: sliding/global geometry, KV sharing, PLE,
/// double-wide FFN, k_eq_v with per-layer KV heads.
#[test]
fn gemma4_fixture_specs() {
    let f = fixture("gemma4-ple-shared.f32.gguf");
    let s = spec_from_gguf(&f).unwrap();
    assert_eq!(s.arch, Arch::Gemma4);
    assert_eq!((s.n_layer(), s.d_model, s.n_vocab), (8, 64, 128));
    assert!(s.tied_output);
    assert_eq!(s.embed_scale, Some(8.0));
    assert_eq!(s.final_logit_softcap, Some(30.0));
    assert_eq!(s.ple.as_ref().map(|p| p.dim), Some(16));
    for (i, l) in s.layers.iter().enumerate() {
        let global = i % 4 == 3;
        assert_eq!(l.head_dim, if global { 64 } else { 32 }, "layer {i}");
        assert_eq!(l.window, if global { None } else { Some(4) }, "layer {i}");
        assert_eq!(
            (l.rope.base, l.rope.n_rot),
            if global { (1e6, 64) } else { (1e4, 32) }
        );
        assert_eq!(l.rope.freq_factors.is_some(), global);
        assert_eq!(
            l.kv_source,
            (i >= 4).then_some(if global { 3 } else { 2 }),
            "layer {i}"
        );
        assert_eq!(l.n_ff, if i >= 4 { 64 } else { 32 }, "layer {i}");
        assert!(l.v_norm && l.qk_norm && l.sandwich_norms && l.ple && l.layer_output_scale);
        assert!(!l.k_eq_v && l.attn_scale == 1.0 && l.ffn == FfnKind::GeluTanhGated);
    }
    let t = ModelTensors::new(&s);
    t.check(&s, &f).unwrap();
    // Shared layers read no K/V weights, even where the file has some (layer 4 does).
    assert!(f.tensor("blk.4.attn_k.weight").is_some());
    assert!(t.layers[4].wk.is_none() && t.layers[4].wv.is_none() && t.layers[4].k_norm.is_none());

    let f = fixture("gemma4-k-eq-v.q8_0.gguf");
    let s = spec_from_gguf(&f).unwrap();
    assert!(s.ple.is_none());
    for (i, l) in s.layers.iter().enumerate() {
        let global = i == 5;
        assert_eq!(
            (l.n_kv_head, l.head_dim),
            if global { (1, 32) } else { (2, 16) }
        );
        assert_eq!(l.k_eq_v, global, "layer {i}");
        assert!(l.kv_source.is_none());
    }
    ModelTensors::new(&s).check(&s, &f).unwrap();
}

#[test]
fn gemma4_moe_is_refused_clearly() {
    let mut w = GgufWriter::new();
    w.add_meta("general.architecture", "gemma4");
    w.add_meta("gemma4.block_count", 1u32);
    w.add_meta("gemma4.expert_count", 128u32);
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    let e = spec_from_gguf(&f).unwrap_err();
    assert!(matches!(e, ModelError::Unsupported(_)), "{e}");
    assert!(
        e.to_string().contains("mixture-of-experts") && e.to_string().contains("not supported yet"),
        "{e}"
    );
}
