//! Writer → reader round trips: the same metadata (in order, bit for bit), the same tensors
//! (name, shape, type, bytes), offsets aligned, and a parsed file re-written to the same bytes.

use std::io::Write;
use std::path::PathBuf;

use kestrel_gguf::{GgmlType, GgufFile, GgufWriter, MetaType, MetaValue};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Metadata equality that compares floats by bits (NaN, -0.0) and array element types.
fn same_value(a: &MetaValue, b: &MetaValue) -> bool {
    match (a, b) {
        (MetaValue::F32(x), MetaValue::F32(y)) => x.to_bits() == y.to_bits(),
        (MetaValue::F64(x), MetaValue::F64(y)) => x.to_bits() == y.to_bits(),
        (MetaValue::Array(ta, va), MetaValue::Array(tb, vb)) => {
            ta == tb && va.len() == vb.len() && va.iter().zip(vb).all(|(x, y)| same_value(x, y))
        }
        _ => a == b,
    }
}

fn assert_same_metadata(got: &[(String, MetaValue)], want: &[(String, MetaValue)]) {
    assert_eq!(got.len(), want.len(), "number of metadata entries");
    for ((gk, gv), (wk, wv)) in got.iter().zip(want) {
        assert_eq!(gk, wk, "key order");
        assert!(same_value(gv, wv), "{gk}: got {gv:?}, wrote {wv:?}");
    }
}

fn metadata() -> Vec<(String, MetaValue)> {
    use MetaValue as V;
    let arr = |t, v| V::Array(t, v);
    vec![
        ("general.architecture".into(), V::from("llama")),
        ("general.name".into(), V::from("round trip ✓ — ünïcode")),
        ("t.u8".into(), V::U8(255)),
        ("t.i8".into(), V::I8(i8::MIN)),
        ("t.u16".into(), V::U16(u16::MAX)),
        ("t.i16".into(), V::I16(-1)),
        ("t.u32".into(), V::U32(u32::MAX)),
        ("t.i32".into(), V::I32(i32::MIN)),
        ("t.u64".into(), V::U64(u64::MAX)),
        ("t.i64".into(), V::I64(i64::MIN)),
        ("t.f32.nan".into(), V::F32(f32::from_bits(0x7FC0_1234))),
        ("t.f32.neg_zero".into(), V::F32(-0.0)),
        ("t.f32.subnormal".into(), V::F32(f32::from_bits(1))),
        ("t.f64".into(), V::F64(-f64::MAX)),
        ("t.bool.false".into(), V::Bool(false)),
        ("t.bool.true".into(), V::Bool(true)),
        ("t.empty_str".into(), V::from("")),
        ("t.empty_arr".into(), arr(MetaType::Str, vec![])),
        (
            "t.tokens".into(),
            arr(
                MetaType::Str,
                ["<s>", "", "▁the", "\n"].map(V::from).to_vec(),
            ),
        ),
        (
            "t.scores".into(),
            arr(MetaType::F32, vec![V::F32(0.5), V::F32(-1e30)]),
        ),
        (
            "t.i64s".into(),
            arr(MetaType::I64, vec![V::I64(1), V::I64(-1)]),
        ),
        (
            "t.nested".into(),
            arr(
                MetaType::Array,
                vec![
                    arr(MetaType::U16, vec![V::U16(1), V::U16(2)]),
                    arr(
                        MetaType::Array,
                        vec![arr(MetaType::Bool, vec![V::Bool(true)])],
                    ),
                    arr(MetaType::Str, vec![]),
                ],
            ),
        ),
    ]
}

type Tensor = (String, Vec<u64>, GgmlType, Vec<u8>);

fn tensors(rng: &mut StdRng) -> Vec<Tensor> {
    let specs: [(&str, &[u64], GgmlType); 8] = [
        ("a.f32", &[3], GgmlType::F32), // 12 bytes: padding follows
        ("b.q4_0", &[64, 3], GgmlType::Q4_0),
        ("c.q4_k", &[256, 2, 1], GgmlType::Q4_K),
        ("d.f16", &[2, 3, 4, 5], GgmlType::F16),
        ("e.q6_k", &[512], GgmlType::Q6_K),
        ("f.i8", &[7], GgmlType::I8),
        ("g.bf16", &[33], GgmlType::BF16),
        ("h.q8_0", &[32, 5], GgmlType::Q8_0),
    ];
    specs
        .iter()
        .map(|&(name, shape, ty)| {
            let n = ty.tensor_bytes(shape).unwrap() as usize;
            (
                name.to_string(),
                shape.to_vec(),
                ty,
                (0..n).map(|_| rng.gen()).collect(),
            )
        })
        .collect()
}

fn build(meta: &[(String, MetaValue)], tensors: &[Tensor], alignment: Option<u32>) -> GgufWriter {
    let mut w = GgufWriter::new();
    if let Some(a) = alignment {
        w.add_meta("general.alignment", MetaValue::U32(a));
    }
    for (k, v) in meta {
        w.add_meta(k, v.clone());
    }
    for (name, shape, ty, data) in tensors {
        w.add_tensor(name, shape, *ty, data.clone()).unwrap();
    }
    w
}

fn check_file(f: &GgufFile, meta: &[(String, MetaValue)], tensors: &[Tensor], alignment: u64) {
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, alignment);
    assert_eq!(f.data_offset % alignment, 0);
    assert_eq!(f.tensors.len(), tensors.len());
    for (t, (name, shape, ty, data)) in f.tensors.iter().zip(tensors) {
        assert_eq!((&t.name, &t.shape, t.ty), (name, shape, *ty));
        assert_eq!(t.size, data.len() as u64, "{name}");
        assert_eq!(t.offset % alignment, 0, "{name} offset {}", t.offset);
        assert_eq!(t.n_elements(), shape.iter().product::<u64>());
        assert!(f.tensor_data(t) == &data[..], "{name}: bytes differ");
        assert_eq!(f.tensor(name), Some(t));
    }
    assert_eq!(
        f.data_bytes(),
        tensors.iter().map(|t| t.3.len() as u64).sum::<u64>()
    );
    assert_same_metadata(&f.metadata, meta);
}

#[test]
fn write_parse_same_metadata_tensors_and_bytes() {
    let mut rng = StdRng::seed_from_u64(3);
    let meta = metadata();
    let tensors = tensors(&mut rng);
    for alignment in [None, Some(1), Some(8), Some(256), Some(4096)] {
        let bytes = build(&meta, &tensors, alignment).to_bytes();
        let f = GgufFile::from_bytes(bytes.clone()).unwrap();
        let mut want = meta.clone();
        if let Some(a) = alignment {
            want.insert(0, ("general.alignment".into(), MetaValue::U32(a)));
        }
        check_file(&f, &want, &tensors, alignment.map_or(32, u64::from));
        // Typed accessors see the same values.
        assert_eq!(f.architecture().unwrap(), "llama");
        assert_eq!(f.get_u64("t.u64").unwrap(), Some(u64::MAX));
        assert_eq!(f.get_f64("t.u64").unwrap(), Some(u64::MAX as f64));
        assert_eq!(f.get_f64("t.i8").unwrap(), Some(-128.0));
        assert!(
            f.get_u64("t.i8").is_err(),
            "negative is not an unsigned integer"
        );
        assert_eq!(
            f.get_str_array("t.tokens").unwrap().unwrap(),
            ["<s>", "", "▁the", "\n"]
        );
        assert!(f.get_str("t.u8").unwrap_err().to_string().contains("t.u8"));
        println!(
            "alignment {:>4}: {} bytes, data at {}",
            f.alignment,
            bytes.len(),
            f.data_offset
        );
    }
}

/// A parsed file fed back through the writer gives the same bytes.
fn rewrite(f: &GgufFile) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in &f.metadata {
        w.add_meta(k, v.clone());
    }
    for t in &f.tensors {
        w.add_tensor(&t.name, &t.shape, t.ty, f.tensor_data(t).to_vec())
            .unwrap();
    }
    w.to_bytes()
}

#[test]
fn parse_then_write_is_byte_identical() {
    let mut rng = StdRng::seed_from_u64(4);
    let tensors = tensors(&mut rng);
    for alignment in [None, Some(64)] {
        let bytes = build(&metadata(), &tensors, alignment).to_bytes();
        let f = GgufFile::from_bytes(bytes.clone()).unwrap();
        assert!(rewrite(&f) == bytes, "alignment {alignment:?}");
    }
    // No tensors, no metadata.
    let empty = GgufWriter::new().to_bytes();
    let f = GgufFile::from_bytes(empty.clone()).unwrap();
    assert!(f.metadata.is_empty() && f.tensors.is_empty());
    assert_eq!(rewrite(&f), empty);
}

#[test]
fn lazy_tensors_and_files_on_disk() {
    let mut rng = StdRng::seed_from_u64(5);
    let meta = metadata();
    let tensors = tensors(&mut rng);
    let make = || {
        let mut w = GgufWriter::new();
        for (k, v) in &meta {
            w.add_meta(k, v.clone());
        }
        for (name, shape, ty, data) in &tensors {
            let data = data.clone();
            let fill = Box::new(move |out: &mut [u8]| {
                assert!(
                    out.iter().all(|&b| b == 0),
                    "lazy fill gets a zeroed buffer"
                );
                out.copy_from_slice(&data);
            });
            w.add_tensor_lazy(name, shape, *ty, fill).unwrap();
        }
        w
    };
    let in_memory = make().to_bytes();
    assert_eq!(in_memory, build(&meta, &tensors, None).to_bytes());

    let dir = std::env::temp_dir().join(format!("kestrel-gguf-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.gguf");
    make().write_file(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), in_memory);
    let f = GgufFile::open(&path).unwrap(); // the mmap path
    check_file(&f, &meta, &tensors, 32);
    drop(f);

    // A file that ends in the middle of its last tensor fails to open and names the tensor.
    let mut cut = std::fs::File::create(&path).unwrap();
    cut.write_all(&in_memory[..in_memory.len() - 40]).unwrap();
    drop(cut);
    let e = GgufFile::open(&path)
        .err()
        .expect("truncated file opens")
        .to_string();
    assert!(e.contains("h.q8_0"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn writer_rejects_inconsistent_tensors() {
    let mut w = GgufWriter::new();
    w.add_f32("x", &[4], &[0.0; 4]).unwrap();
    let e = |r: kestrel_gguf::Result<&mut GgufWriter>| r.err().expect("accepted").to_string();
    let m = e(w.add_f32("x", &[4], &[0.0; 4]));
    assert!(m.contains("\"x\"") && m.contains("duplicate"), "{m}");
    let m = e(w.add_tensor("q", &[48], GgmlType::Q8_0, vec![0; 51]));
    assert!(m.contains("\"q\"") && m.contains("Q8_0"), "{m}");
    let m = e(w.add_tensor("q", &[32], GgmlType::Q8_0, vec![0; 33]));
    assert!(m.contains("33 bytes") && m.contains("34"), "{m}");
    let m = e(w.add_f32("z", &[0, 4], &[]));
    assert!(m.contains("bad shape"), "{m}");
    let m = e(w.add_f32("z", &[1, 1, 1, 1, 1], &[0.0]));
    assert!(m.contains("bad shape"), "{m}");
}

fn find_model(name: &str) -> Option<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(h) = std::env::var_os("KESTREL_HOME") {
        dirs.push(PathBuf::from(h).join("models"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cache/kestrel/models"));
    }
    dirs.into_iter()
        .map(|d| d.join(format!("{name}.gguf")))
        .find(|p| p.is_file())
}

/// Counts bytes and keeps the first `keep`.
struct Head {
    keep: usize,
    head: Vec<u8>,
    total: u64,
}

impl Write for Head {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.keep.saturating_sub(self.head.len()).min(buf.len());
        self.head.extend_from_slice(&buf[..room]);
        self.total += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Our writer re-creates a real file's header (metadata + tensor table + padding) byte for byte
/// from what the reader parsed, and lays the data out at the same offsets and total size.
#[test]
fn real_file_header_rewrites_identically() {
    for name in ["gemma3-270m", "qwen2.5-coder-0.5b"] {
        let Some(path) = find_model(name) else {
            println!(
                "skipping {name}: not found in $KESTREL_HOME/models or ~/.cache/kestrel/models"
            );
            continue;
        };
        let f = GgufFile::open(&path).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in &f.metadata {
            w.add_meta(k, v.clone());
        }
        let mut by_offset: Vec<_> = f.tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        let in_file_order = by_offset
            .iter()
            .map(|t| &t.name)
            .eq(f.tensors.iter().map(|t| &t.name));
        for t in &f.tensors {
            w.add_tensor_lazy(&t.name, &t.shape, t.ty, Box::new(|_| {}))
                .unwrap();
        }
        let mut head = Head {
            keep: f.data_offset as usize,
            head: Vec::new(),
            total: 0,
        };
        w.write(&mut head).unwrap();
        let header = &f.bytes()[..f.data_offset as usize];
        println!(
            "{name}: header {} bytes, rewritten {} identical: {}, total {} vs file {}",
            header.len(),
            head.head.len(),
            head.head == header,
            head.total,
            f.bytes().len()
        );
        assert!(
            in_file_order,
            "{name}: tensors are not stored in table order"
        );
        assert!(head.head == header, "{name}: rewritten header differs");
        assert_eq!(head.total, f.bytes().len() as u64);
    }
}

fn nested(depth: usize) -> MetaValue {
    (0..depth).fold(MetaValue::U8(1), |v, _| {
        let t = v.meta_type();
        MetaValue::Array(t, vec![v])
    })
}

/// The writer refuses, before writing a byte, metadata its reader would reject or misread
/// (it used to write such files silently).
#[test]
fn writer_refuses_metadata_the_reader_cannot_read() {
    let write_err = |w: GgufWriter| {
        let mut out = Vec::new();
        let e = w.write(&mut out).expect_err("invalid metadata written");
        assert!(out.is_empty(), "bytes written before the error");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        e.to_string()
    };

    for a in [48u32, 0, 1 << 21] {
        let mut w = GgufWriter::new();
        w.add_meta("general.alignment", MetaValue::U32(a));
        let m = write_err(w);
        assert!(
            m.contains("general.alignment") && m.contains("power of two"),
            "{m}"
        );
    }
    let mut w = GgufWriter::new();
    w.add_meta("general.alignment", MetaValue::Str("32".into()));
    assert!(write_err(w).contains("general.alignment"));

    let mut w = GgufWriter::new();
    w.add_meta(
        "a",
        MetaValue::Array(MetaType::U32, vec![MetaValue::from("xyz")]),
    );
    let m = write_err(w);
    assert!(
        m.contains("\"a\"") && m.contains("U32") && m.contains("string"),
        "{m}"
    );

    // Eight levels of arrays are readable, nine are not.
    let mut w = GgufWriter::new();
    w.add_meta("deep", nested(8));
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert!(same_value(f.get("deep").unwrap(), &nested(8)));
    let mut w = GgufWriter::new();
    w.add_meta("deep", nested(9));
    let m = write_err(w);
    assert!(
        m.contains("deep") && m.contains("nested deeper than 8"),
        "{m}"
    );

    // write_file reports it as GgufError::Write and creates no file; I/O errors name the path.
    let dir = std::env::temp_dir().join(format!("kestrel-gguf-refuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.gguf");
    let mut w = GgufWriter::new();
    w.add_meta("general.alignment", MetaValue::U32(48));
    let e = w.write_file(&path).unwrap_err();
    assert!(matches!(e, kestrel_gguf::GgufError::Write(_)), "{e}");
    assert!(!path.exists());
    let missing = dir.join("no/such/dir/x.gguf");
    let e = GgufWriter::new()
        .write_file(&missing)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no/such/dir/x.gguf"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[should_panic(expected = "general.alignment")]
fn to_bytes_panics_on_invalid_metadata_instead_of_writing_a_bad_file() {
    let mut w = GgufWriter::new();
    w.add_meta("general.alignment", MetaValue::U32(3));
    let _ = w.to_bytes();
}
