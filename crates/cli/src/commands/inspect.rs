//! `kestrel inspect MODEL`: what a GGUF file holds (architecture, hyperparameters, tensor types,
//! tokenizer), as text or `--json`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use kestrel_gguf::{GgmlType, GgufFile, MetaValue};
use serde_json::{json, Map, Value};

use crate::models;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model: a registry name (fetched if needed) or a path to a GGUF file [default: the
    /// default model].
    pub model: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let path = models::resolve_model(args.model.as_deref())?;
    let file = GgufFile::open(&path).with_context(|| format!("cannot load {}", path.display()))?;
    let report = Report::new(&path, &file)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report.to_json())?;
        writeln!(out)?;
    } else {
        report.write_text(&mut out)?;
    }
    Ok(())
}

/// Architecture hyperparameters shown in the summary: (label, key under `{arch}.`).
const HPARAMS: &[(&str, &str)] = &[
    ("context length", "context_length"),
    ("d_model", "embedding_length"),
    ("layers", "block_count"),
    ("heads", "attention.head_count"),
    ("kv heads", "attention.head_count_kv"),
    ("key length", "attention.key_length"),
    ("value length", "attention.value_length"),
    ("ffn", "feed_forward_length"),
    ("rope dims", "rope.dimension_count"),
    ("rope base", "rope.freq_base"),
    ("rope base (swa)", "rope.freq_base_swa"),
    ("rope scaling", "rope.scaling.type"),
    ("rope scale factor", "rope.scaling.factor"),
    ("rope orig. context", "rope.scaling.original_context_length"),
    ("sliding window", "attention.sliding_window"),
    ("swa pattern", "attention.sliding_window_pattern"),
    ("rms norm eps", "attention.layer_norm_rms_epsilon"),
    ("norm eps", "attention.layer_norm_epsilon"),
    ("attn softcap", "attn_logit_softcapping"),
    ("final softcap", "final_logit_softcapping"),
    ("experts", "expert_count"),
    ("experts used", "expert_used_count"),
    ("vocab (arch)", "vocab_size"),
];

/// Named special-token ids under `tokenizer.ggml.`.
const NAMED_SPECIALS: &[&str] = &[
    "bos",
    "eos",
    "eot",
    "eom",
    "unknown",
    "padding",
    "seperator",
    "mask",
    "fim_pre",
    "fim_suf",
    "fim_mid",
    "fim_pad",
    "fim_rep",
    "fim_sep",
];

struct TensorType {
    ty: GgmlType,
    count: usize,
    bytes: u64,
    params: u64,
}

struct Report<'a> {
    path: &'a Path,
    file: &'a GgufFile,
    file_size: u64,
    arch: Option<&'a str>,
    types: Vec<TensorType>,
    params: u64,
    tokenizer: TokenizerInfo,
}

/// What the tokenizer crate makes of the vocabulary, or why it could not load it.
struct TokenizerInfo {
    /// `tokenizer.ggml.model` / `.pre` as stored.
    model: Option<String>,
    pre: Option<String>,
    loaded: std::result::Result<LoadedTokenizer, String>,
}

struct LoadedTokenizer {
    kind: String,
    pre: Option<String>,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    eog: Vec<u32>,
    specials: Vec<(u32, String)>,
    chat_template_len: Option<usize>,
    pieces: BTreeMap<u32, String>,
}

impl<'a> Report<'a> {
    fn new(path: &'a Path, file: &'a GgufFile) -> Result<Self> {
        let file_size = std::fs::metadata(path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        let arch = file.get_str("general.architecture")?;
        let mut by_type: BTreeMap<GgmlType, TensorType> = BTreeMap::new();
        for t in &file.tensors {
            let e = by_type.entry(t.ty).or_insert(TensorType {
                ty: t.ty,
                count: 0,
                bytes: 0,
                params: 0,
            });
            e.count += 1;
            e.bytes += t.size;
            e.params += t.n_elements();
        }
        let mut types: Vec<TensorType> = by_type.into_values().collect();
        types.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.ty.cmp(&b.ty)));
        let params = file.tensors.iter().map(|t| t.n_elements()).sum();
        Ok(Report {
            path,
            file,
            file_size,
            arch,
            types,
            params,
            tokenizer: TokenizerInfo::new(file),
        })
    }

    fn akey(&self, suffix: &str) -> Option<String> {
        self.arch.map(|a| format!("{a}.{suffix}"))
    }

    fn aget(&self, suffix: &str) -> Option<&'a MetaValue> {
        self.file.get(&self.akey(suffix)?)
    }

    /// head_dim: `attention.key_length` if present, else d_model / heads.
    fn head_dim(&self) -> Option<u64> {
        if let Some(k) = self
            .aget("attention.key_length")
            .and_then(MetaValue::as_u64)
        {
            return Some(k);
        }
        let d = self.aget("embedding_length")?.as_u64()?;
        let h = self.aget("attention.head_count")?.as_u64()?;
        (h > 0).then(|| d / h)
    }

    fn general_str(&self, key: &str) -> Option<&'a str> {
        self.file.get(key).and_then(MetaValue::as_str)
    }

    /// Architecture keys not already shown in the summary.
    fn other_arch_keys(&self) -> Vec<(&'a str, &'a MetaValue)> {
        let Some(arch) = self.arch else {
            return Vec::new();
        };
        let prefix = format!("{arch}.");
        let shown: BTreeSet<&str> = HPARAMS.iter().map(|(_, k)| *k).collect();
        self.file
            .metadata
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(&prefix)?;
                (!shown.contains(rest)).then_some((k.as_str(), v))
            })
            .collect()
    }

    fn write_text(&self, out: &mut impl Write) -> Result<()> {
        let f = self.file;
        let row = |out: &mut dyn Write, label: &str, value: &dyn std::fmt::Display| {
            writeln!(out, "  {label:<20} {value}")
        };
        writeln!(out, "{}", self.path.display())?;
        row(out, "architecture", &self.arch.unwrap_or("(none)"))?;
        if let Some(n) = self.general_str("general.name") {
            row(out, "name", &n)?;
        }
        if let Some(l) = self.general_str("general.size_label") {
            row(out, "size label", &l)?;
        }
        if let Some(ft) = f.get("general.file_type").and_then(MetaValue::as_u64) {
            row(out, "file type", &format!("{} ({ft})", ftype_name(ft)))?;
        }
        row(
            out,
            "file size",
            &format!(
                "{} bytes ({})",
                thousands(self.file_size),
                human_bytes(self.file_size)
            ),
        )?;
        row(
            out,
            "gguf",
            &format!(
                "v{}, {} metadata keys, alignment {}, data at offset {}",
                f.version,
                f.metadata.len(),
                f.alignment,
                f.data_offset
            ),
        )?;
        row(
            out,
            "parameters",
            &format!("{} ({})", human_count(self.params), thousands(self.params)),
        )?;

        writeln!(out, "\nhyperparameters")?;
        for (label, suffix) in HPARAMS {
            match self.aget(suffix) {
                Some(v) => row(out, label, &fmt_value(v, 80))?,
                None if *suffix == "rope.scaling.type" => row(out, label, &"none")?,
                None => {}
            }
            if *suffix == "attention.head_count_kv" {
                if let Some(hd) = self.head_dim() {
                    let how = if self.aget("attention.key_length").is_some() {
                        "key length"
                    } else {
                        "d_model / heads"
                    };
                    row(out, "head_dim", &format!("{hd} ({how})"))?;
                }
            }
        }
        let others = self.other_arch_keys();
        if !others.is_empty() {
            writeln!(out, "  other {}.* keys:", self.arch.unwrap_or(""))?;
            for (k, v) in others {
                writeln!(out, "    {k} = {}", fmt_value(v, 80))?;
            }
        }

        writeln!(
            out,
            "\ntensors: {} ({} of data)",
            f.tensors.len(),
            human_bytes(f.data_bytes())
        )?;
        writeln!(
            out,
            "  {:<8} {:>6} {:>12} {:>7} {:>14} {:>6}",
            "type", "count", "size", "share", "params", "bpw"
        )?;
        let total = f.data_bytes().max(1);
        for t in &self.types {
            writeln!(
                out,
                "  {:<8} {:>6} {:>12} {:>6.1}% {:>14} {:>6.2}",
                t.ty.name(),
                t.count,
                human_bytes(t.bytes),
                100.0 * t.bytes as f64 / total as f64,
                thousands(t.params),
                t.ty.bits_per_weight()
            )?;
        }

        writeln!(out, "\ntokenizer")?;
        let tk = &self.tokenizer;
        let stored = match (&tk.model, &tk.pre) {
            (Some(m), Some(p)) => format!("tokenizer.ggml.model = {m:?}, pre = {p:?}"),
            (Some(m), None) => format!("tokenizer.ggml.model = {m:?}"),
            (None, _) => "no tokenizer.ggml.model".into(),
        };
        match &tk.loaded {
            Err(e) => {
                row(out, "stored", &stored)?;
                row(out, "error", e)?;
            }
            Ok(t) => {
                let kind = match &t.pre {
                    Some(p) => format!("{} (pre {p})", t.kind),
                    None => t.kind.clone(),
                };
                row(out, "kind", &kind)?;
                row(out, "stored", &stored)?;
                row(out, "vocabulary", &thousands(t.vocab_size as u64))?;
                let tok = |id: Option<u32>| match id {
                    Some(id) => t.describe(id),
                    None => "none".into(),
                };
                row(
                    out,
                    "bos",
                    &format!(
                        "{} ({})",
                        tok(t.bos),
                        if t.add_bos { "added" } else { "not added" }
                    ),
                )?;
                row(out, "eos", &tok(t.eos))?;
                let eog: Vec<String> = t.eog.iter().map(|&id| t.describe(id)).collect();
                row(out, "eog", &eog.join(", "))?;
                for name in NAMED_SPECIALS {
                    if matches!(*name, "bos" | "eos") {
                        continue;
                    }
                    let key = format!("tokenizer.ggml.{name}_token_id");
                    if let Some(id) = f.get(&key).and_then(MetaValue::as_u64) {
                        row(out, name, &t.describe(id as u32))?;
                    }
                }
                row(out, "special tokens", &specials_summary(&t.specials, 24))?;
                match t.chat_template_len {
                    Some(n) => row(out, "chat template", &format!("present ({n} bytes)"))?,
                    None => row(out, "chat template", &"absent")?,
                }
            }
        }
        Ok(())
    }

    fn to_json(&self) -> Value {
        let f = self.file;
        let mut hp = Map::new();
        for (_, suffix) in HPARAMS {
            if let Some(v) = self.aget(suffix) {
                hp.insert(suffix.to_string(), meta_json(v));
            }
        }
        if let Some(hd) = self.head_dim() {
            hp.insert("head_dim".into(), json!(hd));
        }
        let arch_meta: Map<String, Value> = self
            .arch
            .map(|a| {
                let prefix = format!("{a}.");
                f.metadata
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), meta_json(v)))
                    .collect()
            })
            .unwrap_or_default();
        let general: Map<String, Value> = f
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("general."))
            .map(|(k, v)| (k.clone(), meta_json(v)))
            .collect();
        let types: Vec<Value> = self
            .types
            .iter()
            .map(|t| {
                json!({
                    "type": t.ty.name(),
                    "count": t.count,
                    "bytes": t.bytes,
                    "params": t.params,
                })
            })
            .collect();
        let tk = &self.tokenizer;
        let tokenizer = match &tk.loaded {
            Err(e) => json!({
                "model": tk.model,
                "pre": tk.pre,
                "error": e,
            }),
            Ok(t) => {
                let tok = |id: Option<u32>| match id {
                    Some(id) => json!({"id": id, "text": t.pieces.get(&id)}),
                    None => Value::Null,
                };
                let named: Map<String, Value> = NAMED_SPECIALS
                    .iter()
                    .filter_map(|name| {
                        let key = format!("tokenizer.ggml.{name}_token_id");
                        let id = f.get(&key)?.as_u64()? as u32;
                        Some((name.to_string(), tok(Some(id))))
                    })
                    .collect();
                json!({
                    "kind": t.kind,
                    "pre": t.pre,
                    "model": tk.model,
                    "vocab_size": t.vocab_size,
                    "bos": tok(t.bos),
                    "eos": tok(t.eos),
                    "add_bos": t.add_bos,
                    "eog": t.eog.iter().map(|&id| tok(Some(id))).collect::<Vec<_>>(),
                    "named_special_tokens": named,
                    "special_tokens": t.specials.iter()
                        .map(|(id, s)| json!({"id": id, "text": s}))
                        .collect::<Vec<_>>(),
                    "chat_template": t.chat_template_len.is_some(),
                    "chat_template_bytes": t.chat_template_len,
                })
            }
        };
        json!({
            "path": self.path.display().to_string(),
            "file_size": self.file_size,
            "architecture": self.arch,
            "name": self.general_str("general.name"),
            "gguf_version": f.version,
            "alignment": f.alignment,
            "data_offset": f.data_offset,
            "metadata_count": f.metadata.len(),
            "general": general,
            "hyperparameters": hp,
            "arch_metadata": arch_meta,
            "tensor_count": f.tensors.len(),
            "tensor_data_bytes": f.data_bytes(),
            "tensor_types": types,
            "parameter_count": self.params,
            "tokenizer": tokenizer,
        })
    }
}

impl LoadedTokenizer {
    fn describe(&self, id: u32) -> String {
        match self.pieces.get(&id) {
            Some(p) => format!("{id} {p:?}"),
            None => format!("{id} (out of range)"),
        }
    }
}

impl TokenizerInfo {
    fn new(file: &GgufFile) -> Self {
        let s = |k: &str| file.get(k).and_then(MetaValue::as_str).map(str::to_string);
        TokenizerInfo {
            model: s("tokenizer.ggml.model"),
            pre: s("tokenizer.ggml.pre"),
            loaded: load_tokenizer(file),
        }
    }
}

fn load_tokenizer(file: &GgufFile) -> std::result::Result<LoadedTokenizer, String> {
    use kestrel_tokenizer::{Tokenizer, TokenizerKind};
    let tok = Tokenizer::from_gguf(file).map_err(|e| e.to_string())?;
    let (kind, pre) = match tok.kind() {
        TokenizerKind::Spm => ("spm".to_string(), None),
        TokenizerKind::Bpe { pre } => ("bpe".to_string(), Some(pre.to_string())),
        TokenizerKind::Gemma4 => ("gemma4".to_string(), None),
    };
    let bos = tok.bos_id();
    let eos = tok.eos_id();
    let mut eog = tok.eog_ids();
    eog.sort_unstable();
    let specials = tok.special_tokens();
    let mut ids: Vec<u32> = eog.clone();
    ids.extend(bos);
    ids.extend(eos);
    for name in NAMED_SPECIALS {
        if let Some(id) = file
            .get(&format!("tokenizer.ggml.{name}_token_id"))
            .and_then(MetaValue::as_u64)
        {
            ids.push(id as u32);
        }
    }
    let pieces = ids
        .into_iter()
        .filter_map(|id| Some((id, tok.piece(id)?.to_string())))
        .collect();
    Ok(LoadedTokenizer {
        kind,
        pre,
        vocab_size: tok.vocab_size(),
        bos,
        eos,
        add_bos: tok.add_bos(),
        eog,
        specials,
        chat_template_len: tok.chat_template().map(str::len),
        pieces,
    })
}

/// `N: id "text", …` listing the special tokens, with `<unusedN>` placeholders (thousands in
/// Gemma's vocabulary) counted rather than listed, and at most `show` others named.
fn specials_summary(specials: &[(u32, String)], show: usize) -> String {
    if specials.is_empty() {
        return "none".into();
    }
    let is_unused = |s: &str| {
        s.strip_prefix("<unused")
            .and_then(|r| r.strip_suffix('>'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let unused = specials.iter().filter(|(_, s)| is_unused(s)).count();
    let named: Vec<&(u32, String)> = specials.iter().filter(|(_, s)| !is_unused(s)).collect();
    let mut items: Vec<String> = named
        .iter()
        .take(show)
        .map(|(id, s)| format!("{id} {s:?}"))
        .collect();
    if named.len() > show {
        items.push(format!("… {} more", named.len() - show));
    }
    if unused > 0 {
        items.push(format!("{unused} <unusedN> placeholders"));
    }
    format!("{}: {}", thousands(specials.len() as u64), items.join(", "))
}

/// llama.cpp's `llama_ftype` names (`general.file_type`).
fn ftype_name(ft: u64) -> &'static str {
    match ft {
        0 => "ALL_F32",
        1 => "MOSTLY_F16",
        2 => "MOSTLY_Q4_0",
        3 => "MOSTLY_Q4_1",
        7 => "MOSTLY_Q8_0",
        8 => "MOSTLY_Q5_0",
        9 => "MOSTLY_Q5_1",
        10 => "MOSTLY_Q2_K",
        11 => "MOSTLY_Q3_K_S",
        12 => "MOSTLY_Q3_K_M",
        13 => "MOSTLY_Q3_K_L",
        14 => "MOSTLY_Q4_K_S",
        15 => "MOSTLY_Q4_K_M",
        16 => "MOSTLY_Q5_K_S",
        17 => "MOSTLY_Q5_K_M",
        18 => "MOSTLY_Q6_K",
        19 => "MOSTLY_IQ2_XXS",
        20 => "MOSTLY_IQ2_XS",
        21 => "MOSTLY_Q2_K_S",
        22 => "MOSTLY_IQ3_XS",
        23 => "MOSTLY_IQ3_XXS",
        24 => "MOSTLY_IQ1_S",
        25 => "MOSTLY_IQ4_NL",
        26 => "MOSTLY_IQ3_S",
        27 => "MOSTLY_IQ3_M",
        28 => "MOSTLY_IQ2_S",
        29 => "MOSTLY_IQ2_M",
        30 => "MOSTLY_IQ4_XS",
        31 => "MOSTLY_IQ1_M",
        32 => "MOSTLY_BF16",
        36 => "MOSTLY_TQ1_0",
        37 => "MOSTLY_TQ2_0",
        38 => "MOSTLY_MXFP4_MOE",
        _ => "unknown",
    }
}

/// f32 values print with their shortest round-trip form (1e-6, not 9.99999997e-7).
fn f32_json(v: f32) -> Value {
    format!("{v}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn meta_json(v: &MetaValue) -> Value {
    match v {
        MetaValue::U8(x) => json!(x),
        MetaValue::I8(x) => json!(x),
        MetaValue::U16(x) => json!(x),
        MetaValue::I16(x) => json!(x),
        MetaValue::U32(x) => json!(x),
        MetaValue::I32(x) => json!(x),
        MetaValue::U64(x) => json!(x),
        MetaValue::I64(x) => json!(x),
        MetaValue::F32(x) => f32_json(*x),
        MetaValue::F64(x) => json!(x),
        MetaValue::Bool(x) => json!(x),
        MetaValue::Str(s) => json!(s),
        MetaValue::Array(_, items) => Value::Array(items.iter().map(meta_json).collect()),
    }
}

fn scalar(v: &MetaValue) -> String {
    match v {
        MetaValue::F32(x) => format!("{x}"),
        MetaValue::F64(x) => format!("{x}"),
        MetaValue::Bool(x) => format!("{x}"),
        MetaValue::Str(s) => format!("{s:?}"),
        MetaValue::Array(_, items) => format!("[{} items]", items.len()),
        _ => v
            .as_i64()
            .map(|i| i.to_string())
            .unwrap_or_else(|| format!("{v:?}")),
    }
}

/// A metadata value for humans: arrays run-length encoded (`[8 ×3, 4]`, or `8 (all 28)` when
/// uniform), long strings cut at `max` characters.
fn fmt_value(v: &MetaValue, max: usize) -> String {
    match v {
        MetaValue::Array(_, items) if items.is_empty() => "[]".into(),
        MetaValue::Array(_, items) => {
            let strs: Vec<String> = items.iter().map(scalar).collect();
            if strs.iter().all(|s| *s == strs[0]) {
                return format!("{} (all {})", strs[0], strs.len());
            }
            let mut runs: Vec<(String, usize)> = Vec::new();
            for s in strs {
                match runs.last_mut() {
                    Some((last, n)) if *last == s => *n += 1,
                    _ => runs.push((s, 1)),
                }
            }
            let body: Vec<String> = runs
                .into_iter()
                .map(|(s, n)| if n == 1 { s } else { format!("{s} ×{n}") })
                .collect();
            let text = format!("[{}] ({} items)", body.join(", "), items.len());
            cut(&text, max.max(40) * 2)
        }
        MetaValue::Str(s) => cut(&format!("{s:?}"), max),
        _ => scalar(v),
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let head: String = s.chars().take(max).collect();
    format!("{head}…")
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut groups: Vec<&str> = Vec::new();
    let mut end = digits.len();
    while end > 3 {
        groups.push(&digits[end - 3..end]);
        end -= 3;
    }
    groups.push(&digits[..end]);
    groups.reverse();
    groups.join(",")
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_gguf::MetaType;

    #[test]
    fn number_formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(253_113_024), "253,113,024");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(253_113_024), "241.4 MiB");
        assert_eq!(human_count(268_098_176), "268.1 M");
        assert_eq!(human_count(1_543_714_304), "1.54 B");
    }

    #[test]
    fn unused_placeholders_are_counted() {
        let sp: Vec<(u32, String)> = vec![
            (0, "<pad>".into()),
            (6, "<unused0>".into()),
            (7, "<unused1>".into()),
            (8, "<unusedX>".into()),
            (9, "<eos>".into()),
        ];
        assert_eq!(
            specials_summary(&sp, 2),
            "5: 0 \"<pad>\", 8 \"<unusedX>\", … 1 more, 2 <unusedN> placeholders"
        );
        assert_eq!(specials_summary(&[], 2), "none");
    }

    #[test]
    fn arrays_are_run_length_encoded() {
        let arr = |v: &[u32]| {
            MetaValue::Array(
                MetaType::U32,
                v.iter().map(|&x| MetaValue::U32(x)).collect(),
            )
        };
        assert_eq!(fmt_value(&arr(&[8, 8, 8]), 80), "8 (all 3)");
        assert_eq!(fmt_value(&arr(&[8, 8, 4, 8]), 80), "[8 ×2, 4, 8] (4 items)");
        assert_eq!(fmt_value(&MetaValue::F32(1e-6), 80), "0.000001");
        assert_eq!(f32_json(1e-6), json!(1e-6));
        assert_eq!(fmt_value(&MetaValue::Str("abcdef".into()), 3), "\"ab…");
    }
}
