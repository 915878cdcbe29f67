//! Typed access to `{arch}.*` hyperparameter keys, with per-layer arrays resolved.

use kestrel_gguf::GgufFile;

use crate::error::{ModelError, Result};

pub struct Hparams<'a> {
    pub f: &'a GgufFile,
    pub arch: &'a str,
}

impl<'a> Hparams<'a> {
    pub fn new(f: &'a GgufFile, arch: &'a str) -> Self {
        Hparams { f, arch }
    }

    fn key(&self, k: &str) -> String {
        format!("{}.{}", self.arch, k)
    }

    pub fn opt_u(&self, k: &str) -> Result<Option<usize>> {
        Ok(self.f.get_u64(&self.key(k))?.map(|v| v as usize))
    }

    pub fn u(&self, k: &str) -> Result<usize> {
        self.opt_u(k)?
            .ok_or_else(|| ModelError::Gguf(kestrel_gguf::GgufError::MissingKey(self.key(k))))
    }

    pub fn opt_f(&self, k: &str) -> Result<Option<f32>> {
        Ok(self.f.get_f64(&self.key(k))?.map(|v| v as f32))
    }

    pub fn opt_str(&self, k: &str) -> Result<Option<&'a str>> {
        Ok(self.f.get_str(&self.key(k))?)
    }

    /// A value that may be a scalar or a per-layer array.
    pub fn per_layer_u(&self, k: &str, n_layer: usize) -> Result<Option<Vec<usize>>> {
        let key = self.key(k);
        let Some(v) = self.f.get(&key) else {
            return Ok(None);
        };
        let bad = |reason: String| ModelError::BadParam {
            key: key.clone(),
            reason,
        };
        if let Some(x) = v.as_u64() {
            return Ok(Some(vec![x as usize; n_layer]));
        }
        let arr = v.as_array().ok_or_else(|| {
            bad(format!(
                "expected an integer or an array, got {}",
                v.type_name()
            ))
        })?;
        if arr.len() != n_layer {
            return Err(bad(format!("{} entries for {n_layer} layers", arr.len())));
        }
        arr.iter()
            .map(|e| {
                e.as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| bad("non-integer entry".into()))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// A per-layer boolean array (e.g. Gemma 4's sliding_window_pattern).
    pub fn per_layer_bool(&self, k: &str, n_layer: usize) -> Result<Option<Vec<bool>>> {
        let key = self.key(k);
        let Some(arr) = self.f.get_array(&key)? else {
            return Ok(None);
        };
        if arr.len() != n_layer {
            return Err(ModelError::BadParam {
                key,
                reason: format!("{} entries for {n_layer} layers", arr.len()),
            });
        }
        arr.iter()
            .map(|e| {
                e.as_bool().ok_or_else(|| ModelError::BadParam {
                    key: key.clone(),
                    reason: "non-bool entry".into(),
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// Positive and not absurd: guards allocation sizes derived from the file.
pub fn check_range(key: &str, v: usize, max: usize) -> Result<usize> {
    if v == 0 || v > max {
        return Err(ModelError::BadParam {
            key: key.into(),
            reason: format!("{v} is outside 1..={max}"),
        });
    }
    Ok(v)
}
