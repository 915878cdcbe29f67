//! `kestrel synth`: the files it writes load in our loader and tokenizer, inspect cleanly and
//! generate; Gemma 4 files have the spec's keys, tensors and types; output is reproducible.
//! Files go to a fresh folder under the system temp dir, removed afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kestrel_gguf::{GgmlType, GgufFile};
use kestrel_model::{spec_from_gguf, ModelTensors};
use kestrel_tokenizer::Tokenizer;
use serde_json::Value;

fn kestrel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kestrel"))
        .args(args)
        .output()
        .expect("run kestrel")
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("kestrel-synth-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn synth(preset: &str, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["synth", "--preset", preset, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(kestrel(&args), &format!("synth {preset}"))
}

fn run_json(path: &Path, n: &str) -> Value {
    let out = ok(
        kestrel(&[
            "run",
            "-m",
            path.to_str().unwrap(),
            "-p",
            "hello",
            "-n",
            n,
            "--temp",
            "0",
            "--device",
            "cpu",
            "--json",
        ]),
        "run",
    );
    serde_json::from_str(&out).expect("run --json prints JSON")
}

fn ty(f: &GgufFile, name: &str) -> Option<GgmlType> {
    f.tensor(name).map(|t| t.ty)
}

#[test]
fn synth_qwen3_0_6b_inspects_and_generates() {
    let dir = TempDir::new("q06");
    let path = dir.file("qwen3-0.6b.gguf");
    let report = synth("qwen3-0.6b", &path, &[]);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(report.contains(&format!("{size} bytes")), "{report}");

    let j: Value = serde_json::from_str(&ok(
        kestrel(&["inspect", "--json", path.to_str().unwrap()]),
        "inspect",
    ))
    .unwrap();
    assert_eq!(j["architecture"], "qwen3");
    assert_eq!(j["file_size"], size);
    assert_eq!(j["gguf_version"], 3);
    assert_eq!(j["hyperparameters"]["block_count"], 28);
    assert_eq!(j["hyperparameters"]["embedding_length"], 1024);
    assert_eq!(j["tokenizer"]["kind"], "spm");
    assert_eq!(j["tokenizer"]["vocab_size"], 151_936);
    let mut types: Vec<&str> = j["tensor_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(types, ["F32", "Q4_K", "Q6_K"]);
    let text = ok(kestrel(&["inspect", path.to_str().unwrap()]), "inspect");
    assert!(text.contains("MOSTLY_Q4_K_M"), "{text}");

    let g = run_json(&path, "4");
    assert_eq!(g["generated_ids"].as_array().unwrap().len(), 4, "{g}");
    assert_eq!(g["finish_reason"], "length", "{g}");
    // Greedy decoding of the same file is deterministic.
    assert_eq!(run_json(&path, "4")["generated_ids"], g["generated_ids"]);
}

/// Every non-Gemma-4 preset, cut to 2 layers (full width and vocabulary): our loader builds the
/// spec and finds every tensor with its shape, the tokenizer loads, and `kestrel run` generates.
#[test]
fn synth_presets_with_two_layers_pass_the_loader() {
    let dir = TempDir::new("loader");
    // (preset, d_model, vocab, head_dim, sliding window, tied)
    for (preset, d, vocab, hd, window, tied) in [
        ("qwen3-0.6b", 1024, 151_936, 128, None, true),
        ("qwen3-8b", 4096, 151_936, 128, None, false),
        ("llama3-8b", 4096, 128_256, 128, None, false),
        ("gemma3-4b", 2560, 262_144, 256, Some(1024), true),
        ("gemma3-12b", 3840, 262_144, 256, Some(1024), true),
    ] {
        let path = dir.file(&format!("{preset}.gguf"));
        synth(preset, &path, &["--layers", "2", "--seed", "3"]);
        {
            let f = GgufFile::open(&path).unwrap();
            let spec = spec_from_gguf(&f).unwrap_or_else(|e| panic!("{preset}: {e}"));
            ModelTensors::new(&spec)
                .check(&spec, &f)
                .unwrap_or_else(|e| panic!("{preset}: {e}"));
            assert_eq!(spec.n_layer(), 2, "{preset}");
            assert_eq!((spec.d_model, spec.n_vocab), (d, vocab), "{preset}");
            assert_eq!(spec.tied_output, tied, "{preset}");
            assert_eq!(spec.layers[0].head_dim, hd, "{preset}");
            assert_eq!(spec.layers[0].window, window, "{preset}");
            let tok = Tokenizer::from_gguf(&f).unwrap_or_else(|e| panic!("{preset}: {e}"));
            assert!(!tok.encode("hello world", true, true).is_empty());
            // The Q4_K_M rule on 2 layers: use_more_bits picks layer 1 only.
            for (name, want) in [
                ("blk.0.attn_v.weight", GgmlType::Q4_K),
                ("blk.1.attn_v.weight", GgmlType::Q6_K),
                ("blk.0.ffn_down.weight", GgmlType::Q4_K),
                ("blk.1.ffn_down.weight", GgmlType::Q6_K),
                ("blk.0.attn_q.weight", GgmlType::Q4_K),
                ("output_norm.weight", GgmlType::F32),
            ] {
                assert_eq!(ty(&f, name), Some(want), "{preset} {name}");
            }
            let head = if tied {
                "token_embd.weight"
            } else {
                "output.weight"
            };
            assert_eq!(ty(&f, head), Some(GgmlType::Q6_K), "{preset}");
        }
        let g = run_json(&path, "2");
        assert_eq!(
            g["generated_ids"].as_array().unwrap().len(),
            2,
            "{preset}: {g}"
        );
        std::fs::remove_file(&path).unwrap();
    }
}

fn meta_u64(f: &GgufFile, key: &str) -> u64 {
    f.get_u64(key).unwrap().unwrap_or_else(|| panic!("{key}"))
}

fn meta_bools(f: &GgufFile, key: &str) -> Vec<bool> {
    f.get_array(key)
        .unwrap()
        .unwrap_or_else(|| panic!("{key}"))
        .iter()
        .map(|v| v.as_bool().unwrap())
        .collect()
}

fn meta_ints(f: &GgufFile, key: &str) -> Vec<u64> {
    f.get_array(key)
        .unwrap()
        .unwrap_or_else(|| panic!("{key}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// Gemma 4 files (the loader does not take gemma4 yet): keys, tensor names, shapes and types per
/// specs/gemma.md §3.5-3.6 and PEERS.md's mixes, on 2-layer cuts (one sliding, one global layer).
#[test]
fn synth_gemma4_files_follow_the_spec() {
    let dir = TempDir::new("gemma4");

    let path = dir.file("e4b.gguf");
    synth("gemma4-e4b", &path, &["--layers", "2"]);
    {
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.architecture().unwrap(), "gemma4");
        assert_eq!(meta_u64(&f, "gemma4.embedding_length"), 2560);
        assert_eq!(meta_u64(&f, "gemma4.block_count"), 2);
        assert_eq!(meta_u64(&f, "gemma4.attention.head_count_kv"), 2);
        assert_eq!(meta_u64(&f, "gemma4.attention.key_length"), 512);
        assert_eq!(meta_u64(&f, "gemma4.attention.key_length_swa"), 256);
        assert_eq!(meta_u64(&f, "gemma4.rope.dimension_count_swa"), 256);
        assert_eq!(meta_u64(&f, "gemma4.attention.sliding_window"), 512);
        assert_eq!(meta_u64(&f, "gemma4.embedding_length_per_layer_input"), 256);
        assert_eq!(
            meta_bools(&f, "gemma4.attention.sliding_window_pattern"),
            [true, false]
        );
        assert_eq!(
            f.get_f64("gemma4.final_logit_softcapping").unwrap(),
            Some(30.0)
        );
        for (name, want_ty, shape) in [
            ("token_embd.weight", GgmlType::Q8_0, vec![2560, 262_144]),
            (
                "per_layer_token_embd.weight",
                GgmlType::Q8_0,
                vec![512, 262_144],
            ),
            (
                "per_layer_model_proj.weight",
                GgmlType::F16,
                vec![2560, 512],
            ),
            ("per_layer_proj_norm.weight", GgmlType::F32, vec![256]),
            ("rope_freqs.weight", GgmlType::F32, vec![256]),
            ("blk.0.attn_q.weight", GgmlType::Q8_0, vec![2560, 2048]),
            ("blk.0.attn_v.weight", GgmlType::Q8_0, vec![2560, 512]),
            ("blk.1.attn_q.weight", GgmlType::Q8_0, vec![2560, 4096]),
            ("blk.1.attn_k.weight", GgmlType::Q8_0, vec![2560, 1024]),
            ("blk.1.attn_v.weight", GgmlType::Q8_0, vec![2560, 1024]),
            ("blk.1.attn_output.weight", GgmlType::Q8_0, vec![4096, 2560]),
            ("blk.1.attn_k_norm.weight", GgmlType::F32, vec![512]),
            ("blk.1.ffn_down.weight", GgmlType::Q8_0, vec![10240, 2560]),
            ("blk.1.inp_gate.weight", GgmlType::F32, vec![2560, 256]),
            ("blk.1.proj.weight", GgmlType::F32, vec![256, 2560]),
            ("blk.1.post_norm.weight", GgmlType::F32, vec![2560]),
            ("blk.1.layer_output_scale.weight", GgmlType::F32, vec![1]),
        ] {
            let t = f.tensor(name).unwrap_or_else(|| panic!("e4b: no {name}"));
            assert_eq!((t.ty, &t.shape), (want_ty, &shape), "e4b {name}");
        }
        assert!(f.tensor("output.weight").is_none());
        let freqs = f.tensor_data(f.tensor("rope_freqs.weight").unwrap());
        let v: Vec<f32> = freqs
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert!(v[..64].iter().all(|&x| x == 1.0) && v[64..].iter().all(|&x| x == 1e30));
        Tokenizer::from_gguf(&f).unwrap();
    }
    std::fs::remove_file(&path).unwrap();

    let path = dir.file("12b.gguf");
    synth("gemma4-12b", &path, &["--layers", "2"]);
    {
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(meta_ints(&f, "gemma4.attention.head_count_kv"), [8, 1]);
        assert_eq!(meta_u64(&f, "gemma4.embedding_length_per_layer_input"), 0);
        assert!(f.get("gemma4.attention.shared_kv_layers").is_none());
        assert_eq!(ty(&f, "token_embd.weight"), Some(GgmlType::Q6_K));
        assert_eq!(ty(&f, "blk.0.attn_v.weight"), Some(GgmlType::Q4_0));
        assert_eq!(ty(&f, "blk.1.attn_v.weight"), None, "k_eq_v global layer");
        assert_eq!(f.tensor("blk.1.attn_k.weight").unwrap().shape, [3840, 512]);
        assert_eq!(ty(&f, "blk.1.ffn_up.weight"), Some(GgmlType::Q4_0));
        assert!(f.tensor("per_layer_token_embd.weight").is_none());
    }
    std::fs::remove_file(&path).unwrap();

    let path = dir.file("e2b.gguf");
    synth("gemma4-e2b", &path, &["--layers", "2"]);
    {
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(meta_u64(&f, "gemma4.embedding_length"), 1536);
        assert_eq!(meta_u64(&f, "gemma4.attention.head_count_kv"), 1);
        assert_eq!(meta_u64(&f, "gemma4.feed_forward_length"), 6144);
        assert_eq!(f.tensor("blk.1.attn_k.weight").unwrap().shape, [1536, 512]);
    }
}

#[test]
fn synth_is_reproducible_and_does_not_overwrite_without_force() {
    let dir = TempDir::new("seed");
    let (a, b, c) = (dir.file("a.gguf"), dir.file("b.gguf"), dir.file("c.gguf"));
    synth("qwen3-0.6b", &a, &["--layers", "1", "--seed", "7"]);
    synth("qwen3-0.6b", &b, &["--layers", "1", "--seed", "7"]);
    synth("qwen3-0.6b", &c, &["--layers", "1", "--seed", "8"]);
    let (ba, bb, bc) = (
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        std::fs::read(&c).unwrap(),
    );
    assert!(ba == bb, "same seed, different bytes");
    assert_eq!(ba.len(), bc.len());
    assert!(ba != bc, "different seeds, same bytes");

    let o = kestrel(&[
        "synth",
        "--preset",
        "qwen3-0.6b",
        "--layers",
        "1",
        "--out",
        a.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    synth(
        "qwen3-0.6b",
        &a,
        &["--layers", "1", "--seed", "8", "--force"],
    );
    assert!(std::fs::read(&a).unwrap() == bc);
    assert!(!dir.file("a.gguf.partial").exists());
}
