//! Reading GGUF v2/v3 files: header, metadata and tensor table parsed and validated up front,
//! tensor data handed out as zero-copy views into the mapping.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{GgufError, Result};
use crate::meta::{MetaType, MetaValue};
use crate::types::GgmlType;

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions.
pub const MAX_DIMS: usize = 4;
/// Arrays nested deeper than this are rejected (real files nest at most once).
pub(crate) const MAX_ARRAY_DEPTH: usize = 8;
/// Longest metadata array accepted. Real files hold at most a few hundred thousand entries
/// (vocabularies, merges); each parsed element takes 32 bytes, so an unbounded count read from a
/// damaged multi-gigabyte file would make the process abort on allocation failure.
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Counts read from the file only size the initial allocations up to this many bytes; beyond
/// that, collections grow as entries are actually parsed.
const MAX_PREALLOC_BYTES: u64 = 16 << 20;

fn prealloc<T>(n: u64) -> usize {
    n.min(MAX_PREALLOC_BYTES / std::mem::size_of::<T>().max(1) as u64) as usize
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `shape[0]` is the contiguous dimension.
    pub shape: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Byte size of the data, derived from `ty` and `shape`.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed, validated GGUF file.
pub struct GgufFile {
    pub version: u32,
    pub alignment: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
    storage: Storage,
}

impl GgufFile {
    /// Memory-map and parse a file.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only; like every mmap-based loader we assume the file
        // is not truncated by another process while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Storage::Mmap(map))
    }

    /// Parse a file held in memory (tests, fuzzing, small fixtures).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<GgufFile> {
        let buf = storage.bytes();
        let mut c = Cursor { buf, pos: 0 };
        let magic: [u8; 4] = c.take(4, "magic")?.try_into().expect("4 bytes");
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = c.u32("version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // Each kv needs at least 8 (key len) + 4 (type) + 1 bytes; each tensor at least 8+4+8+4+8.
        if n_kv > c.remaining() / 13 {
            return Err(GgufError::BadMetadata {
                offset: 16,
                key: String::new(),
                reason: format!("metadata count {n_kv} cannot fit in the file"),
            });
        }
        if n_tensors > c.remaining() / 32 {
            return Err(GgufError::BadTensor {
                name: String::new(),
                reason: format!("tensor count {n_tensors} cannot fit in the file"),
            });
        }

        let mut metadata = Vec::with_capacity(prealloc::<(String, MetaValue)>(n_kv));
        let mut meta_index = HashMap::with_capacity(prealloc::<(String, usize)>(n_kv));
        for _ in 0..n_kv {
            let at = c.pos as u64;
            let key = c.string("metadata key")?;
            let bad = |reason: String| GgufError::BadMetadata {
                offset: at,
                key: key.clone(),
                reason,
            };
            let tid = c.u32(&format!("type of metadata key {key:?}"))?;
            let ty =
                MetaType::from_id(tid).ok_or_else(|| bad(format!("unknown value type {tid}")))?;
            let value = c.value(ty, &key, 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(bad("duplicate key".into()));
            }
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => {
                let v = &metadata[i].1;
                match v.as_u64() {
                    Some(a) if valid_alignment(a) => a,
                    _ => {
                        return Err(GgufError::BadMetadata {
                            offset: 0,
                            key: "general.alignment".into(),
                            reason: format!("must be a power of two up to 1 MiB, got {v:?}"),
                        })
                    }
                }
            }
        };

        let mut tensors = Vec::with_capacity(prealloc::<TensorInfo>(n_tensors));
        let mut tensor_index = HashMap::with_capacity(prealloc::<(String, usize)>(n_tensors));
        for i in 0..n_tensors {
            let name = c.string(&format!("name of tensor #{i}"))?;
            let bad = |reason: String| GgufError::BadTensor {
                name: name.clone(),
                reason,
            };
            let n_dims = c.u32(&format!("dimension count of tensor {name:?}"))? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(bad(format!(
                    "{n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut shape = Vec::with_capacity(n_dims);
            for d in 0..n_dims {
                let ne = c.u64(&format!("dimension {d} of tensor {name:?}"))?;
                if ne == 0 || ne > i64::MAX as u64 {
                    return Err(bad(format!("dimension {d} is {ne}")));
                }
                shape.push(ne);
            }
            let tid = c.u32(&format!("type of tensor {name:?}"))?;
            let ty =
                GgmlType::from_id(tid).ok_or_else(|| bad(format!("unknown ggml type id {tid}")))?;
            let offset = c.u64(&format!("offset of tensor {name:?}"))?;
            if shape[0] % ty.block_size() as u64 != 0 {
                return Err(bad(format!(
                    "first dimension {} is not a multiple of the {} block size {}",
                    shape[0],
                    ty,
                    ty.block_size()
                )));
            }
            let size = ty
                .tensor_bytes(&shape)
                .ok_or_else(|| bad(format!("size of shape {shape:?} overflows")))?;
            if offset % alignment != 0 {
                return Err(bad(format!(
                    "offset {offset} is not aligned to {alignment}"
                )));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(bad("duplicate tensor name".into()));
            }
            tensors.push(TensorInfo {
                name,
                shape,
                ty,
                offset,
                size,
            });
        }

        let data_offset = align_up(c.pos as u64, alignment);
        let data_len = (buf.len() as u64).saturating_sub(data_offset);
        if !tensors.is_empty() && data_offset > buf.len() as u64 {
            return Err(GgufError::Truncated {
                offset: buf.len() as u64,
                what: "padding before the tensor data".into(),
            });
        }
        for t in &tensors {
            let end = t.offset.checked_add(t.size);
            if end.is_none_or(|e| e > data_len) {
                return Err(GgufError::BadTensor {
                    name: t.name.clone(),
                    reason: format!(
                        "data [{}, +{}) runs past the end of the data section ({} bytes): file truncated?",
                        t.offset, t.size, data_len
                    ),
                });
            }
        }
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        for w in by_offset.windows(2) {
            if w[0].offset + w[0].size > w[1].offset {
                return Err(GgufError::BadTensor {
                    name: w[1].name.clone(),
                    reason: format!("data overlaps tensor {:?}", w[0].name),
                });
            }
        }

        Ok(GgufFile {
            version,
            alignment,
            metadata,
            tensors,
            data_offset,
            meta_index,
            tensor_index,
            storage,
        })
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Zero-copy view of a tensor's data (bounds were checked at parse time).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + t.offset) as usize;
        &self.bytes()[start..start + t.size as usize]
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.size).sum()
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        f: impl FnOnce(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| GgufError::WrongType {
                key: key.to_string(),
                expected,
                found: v.type_name(),
            }),
        }
    }

    /// A string value; `Ok(None)` when absent, `Err` when present with another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "string", |v| v.as_str())
    }

    /// Any non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "unsigned integer", |v| v.as_u64())
    }

    /// Any float or integer.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "number", |v| v.as_f64())
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "bool", |v| v.as_bool())
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&[MetaValue]>> {
        self.typed(key, "array", |v| v.as_array())
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.typed(key, "array of strings", |v| {
            v.as_array()?.iter().map(|e| e.as_str()).collect()
        })
    }

    pub fn require_str(&self, key: &str) -> Result<&str> {
        self.get_str(key)?
            .ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    pub fn require_u64(&self, key: &str) -> Result<u64> {
        self.get_u64(key)?
            .ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.into()))
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.require_str("general.architecture")
    }
}

/// `general.alignment` values the reader accepts: a power of two up to 1 MiB.
pub(crate) fn valid_alignment(a: u64) -> bool {
    a.is_power_of_two() && a <= 1 << 20
}

pub(crate) fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        self.take_with(n, || what.to_string())
    }

    /// `take` with the error's description built only on error: the per-element reads of
    /// metadata arrays (hundreds of thousands of vocab entries) must not format a string each.
    fn take_with(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                offset: self.buf.len() as u64,
                what: what(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        self.string_with(|| what.to_string())
    }

    fn string_with(&mut self, what: impl Fn() -> String) -> Result<String> {
        let at = self.pos as u64;
        let len = u64::from_le_bytes(self.arr(&what)?);
        let bytes = self.take_with(len, &what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::BadMetadata {
            offset: at,
            key: what(),
            reason: "string is not valid UTF-8".into(),
        })
    }

    fn value(&mut self, ty: MetaType, key: &str, depth: usize) -> Result<MetaValue> {
        let what = || format!("value of metadata key {key:?}");
        Ok(match ty {
            MetaType::U8 => MetaValue::U8(self.take_with(1, what)?[0]),
            MetaType::I8 => MetaValue::I8(self.take_with(1, what)?[0] as i8),
            MetaType::U16 => MetaValue::U16(u16::from_le_bytes(self.arr(what)?)),
            MetaType::I16 => MetaValue::I16(i16::from_le_bytes(self.arr(what)?)),
            MetaType::U32 => MetaValue::U32(u32::from_le_bytes(self.arr(what)?)),
            MetaType::I32 => MetaValue::I32(i32::from_le_bytes(self.arr(what)?)),
            MetaType::F32 => MetaValue::F32(f32::from_le_bytes(self.arr(what)?)),
            MetaType::U64 => MetaValue::U64(u64::from_le_bytes(self.arr(what)?)),
            MetaType::I64 => MetaValue::I64(i64::from_le_bytes(self.arr(what)?)),
            MetaType::F64 => MetaValue::F64(f64::from_le_bytes(self.arr(what)?)),
            MetaType::Bool => {
                let at = self.pos as u64;
                match self.take_with(1, what)?[0] {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    b => {
                        return Err(GgufError::BadMetadata {
                            offset: at,
                            key: key.into(),
                            reason: format!("bool byte {b}"),
                        })
                    }
                }
            }
            MetaType::Str => MetaValue::Str(self.string_with(what)?),
            MetaType::Array => {
                let at = self.pos as u64;
                let bad = |reason: String| GgufError::BadMetadata {
                    offset: at,
                    key: key.into(),
                    reason,
                };
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(bad(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let tid = self.u32(&what())?;
                let ety = MetaType::from_id(tid)
                    .ok_or_else(|| bad(format!("unknown array element type {tid}")))?;
                let n = self.u64(&what())?;
                if n > MAX_ARRAY_LEN {
                    return Err(bad(format!(
                        "array of {n} elements (at most {MAX_ARRAY_LEN} allowed)"
                    )));
                }
                // Strings and arrays take at least 8 bytes each.
                let min = ety.scalar_size().unwrap_or(8) as u64;
                if n > self.remaining() / min {
                    return Err(GgufError::Truncated {
                        offset: self.buf.len() as u64,
                        what: format!("{n}-element array of metadata key {key:?}"),
                    });
                }
                let mut v = Vec::with_capacity(prealloc::<MetaValue>(n));
                for _ in 0..n {
                    v.push(self.value(ety, key, depth + 1)?);
                }
                MetaValue::Array(ety, v)
            }
        })
    }

    fn arr<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N]> {
        Ok(self.take_with(N as u64, what)?.try_into().expect("N"))
    }
}
