//! Writing GGUF v3 files. Tensor data is either held in memory or produced on demand while
//! writing, so a multi-gigabyte synthetic model never has to sit in RAM at once.

use std::io::{self, Write};
use std::path::Path;

use crate::error::{GgufError, Result};
use crate::meta::{MetaType, MetaValue};
use crate::reader::{
    align_up, valid_alignment, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN,
    MAX_DIMS,
};
use crate::types::GgmlType;

/// Produces a tensor's bytes into the zeroed slice it is given.
pub type TensorFill = Box<dyn FnOnce(&mut [u8]) + Send>;

enum TensorData {
    Bytes(Vec<u8>),
    Lazy(TensorFill),
}

struct PendingTensor {
    name: String,
    shape: Vec<u64>,
    ty: GgmlType,
    size: u64,
    data: TensorData,
}

pub struct GgufWriter {
    alignment: u64,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Add (or replace) a metadata entry. `general.alignment` also sets the data alignment.
    pub fn add_meta(&mut self, key: &str, value: impl Into<MetaValue>) -> &mut Self {
        let value = value.into();
        if key == "general.alignment" {
            if let Some(a) = value.as_u64().filter(|&a| valid_alignment(a)) {
                self.alignment = a;
            }
        }
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }

    /// An array of strings.
    pub fn add_str_array<S: AsRef<str>>(&mut self, key: &str, items: &[S]) -> &mut Self {
        let v = items
            .iter()
            .map(|s| MetaValue::Str(s.as_ref().to_string()))
            .collect();
        self.add_meta(key, MetaValue::Array(MetaType::Str, v))
    }

    fn check_tensor(&self, name: &str, shape: &[u64], ty: GgmlType) -> Result<u64> {
        let bad = |m: String| GgufError::Write(format!("tensor {name:?}: {m}"));
        if shape.is_empty() || shape.len() > MAX_DIMS || shape.contains(&0) {
            return Err(bad(format!("bad shape {shape:?}")));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad("duplicate name".into()));
        }
        ty.tensor_bytes(shape)
            .ok_or_else(|| bad(format!("shape {shape:?} is not whole {ty} blocks")))
    }

    /// Add a tensor whose bytes are already encoded in `ty`'s block format.
    pub fn add_tensor(
        &mut self,
        name: &str,
        shape: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let size = self.check_tensor(name, shape, ty)?;
        if data.len() as u64 != size {
            return Err(GgufError::Write(format!(
                "tensor {name:?}: {} bytes given, {size} expected for {ty} {shape:?}",
                data.len()
            )));
        }
        self.push(name, shape, ty, size, TensorData::Bytes(data));
        Ok(self)
    }

    /// Add an f32 tensor.
    pub fn add_f32(&mut self, name: &str, shape: &[u64], values: &[f32]) -> Result<&mut Self> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, shape, GgmlType::F32, bytes)
    }

    /// Add a tensor whose bytes are produced by `fill` when the file is written.
    pub fn add_tensor_lazy(
        &mut self,
        name: &str,
        shape: &[u64],
        ty: GgmlType,
        fill: TensorFill,
    ) -> Result<&mut Self> {
        let size = self.check_tensor(name, shape, ty)?;
        self.push(name, shape, ty, size, TensorData::Lazy(fill));
        Ok(self)
    }

    fn push(&mut self, name: &str, shape: &[u64], ty: GgmlType, size: u64, data: TensorData) {
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            ty,
            size,
            data,
        });
    }

    /// Refuse metadata the reader would reject or misread: an invalid `general.alignment`,
    /// an array holding values of another type than it declares, arrays too long or too deep.
    fn validate(&self) -> std::result::Result<(), String> {
        fn check(key: &str, v: &MetaValue, depth: usize) -> std::result::Result<(), String> {
            let MetaValue::Array(ety, items) = v else {
                return Ok(());
            };
            if depth >= MAX_ARRAY_DEPTH {
                return Err(format!(
                    "key {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                ));
            }
            if items.len() as u64 > MAX_ARRAY_LEN {
                return Err(format!(
                    "key {key:?}: array of {} elements (at most {MAX_ARRAY_LEN})",
                    items.len()
                ));
            }
            for it in items {
                if it.meta_type() != *ety {
                    return Err(format!(
                        "key {key:?}: array of {ety:?} holds a {} value",
                        it.type_name()
                    ));
                }
                check(key, it, depth + 1)?;
            }
            Ok(())
        }
        for (k, v) in &self.metadata {
            if k == "general.alignment" && !v.as_u64().is_some_and(valid_alignment) {
                return Err(format!(
                    "general.alignment must be a power of two up to 1 MiB, got {v:?}"
                ));
            }
            check(k, v, 0)?;
        }
        Ok(())
    }

    /// Write the whole file to `w`. Fails with `InvalidInput`, before writing anything, if the
    /// metadata could not be read back (see `validate`).
    pub fn write(self, w: &mut impl Write) -> io::Result<()> {
        self.validate().map_err(|m| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot write GGUF: {m}"),
            )
        })?;
        let mut header = Vec::new();
        header.extend_from_slice(&GGUF_MAGIC);
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut header, k);
            header.extend_from_slice(&(v.meta_type() as u32).to_le_bytes());
            put_value(&mut header, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut header, &t.name);
            header.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = align_up(offset + t.size, self.alignment);
        }
        let padded = align_up(header.len() as u64, self.alignment) as usize;
        header.resize(padded, 0);
        w.write_all(&header)?;

        let mut written = 0u64;
        for t in self.tensors {
            let mut buf;
            let bytes: &[u8] = match t.data {
                TensorData::Bytes(ref b) => b,
                TensorData::Lazy(fill) => {
                    buf = vec![0u8; t.size as usize];
                    fill(&mut buf);
                    &buf
                }
            };
            w.write_all(bytes)?;
            written += t.size;
            let pad = align_up(written, self.alignment) - written;
            w.write_all(&vec![0u8; pad as usize])?;
            written += pad;
        }
        w.flush()
    }

    /// The whole file in memory.
    ///
    /// # Panics
    /// If the metadata is invalid (see `write`); writing to a `Vec` cannot fail otherwise.
    pub fn to_bytes(self) -> Vec<u8> {
        let mut v = Vec::new();
        if let Err(e) = self.write(&mut v) {
            panic!("GgufWriter::to_bytes: {e}");
        }
        v
    }

    /// Write the file at `path`. Invalid metadata is reported before the file is created.
    pub fn write_file(self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.validate().map_err(GgufError::Write)?;
        let fail = |e: io::Error| GgufError::Write(format!("{}: {e}", path.display()));
        let f = std::fs::File::create(path).map_err(fail)?;
        let mut w = io::BufWriter::with_capacity(1 << 22, f);
        self.write(&mut w).map_err(fail)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::Str(s) => put_str(out, s),
        MetaValue::Array(ety, items) => {
            out.extend_from_slice(&(*ety as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(out, it);
            }
        }
    }
}
