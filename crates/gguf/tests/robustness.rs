//! The reader must never panic on a damaged file, and its errors must say what is wrong.
//!
//! - A small synthetic GGUF (made with our writer: every metadata type, nested arrays, strings,
//!   tensors of several types) parsed truncated at every offset and with every byte changed
//!   ten ways.
//! - The real model files, when present: every truncation in the first 128 KiB (of the first
//!   model found; every 61st for the others), then every 4099th offset through the header +
//!   metadata + tensor table, and 300 seeded random byte flips per model in that region (parsed
//!   with a full-length buffer so that the tensor-data checks run too).
//! - Hand-made broken files whose error messages are checked.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use kestrel_gguf::quant::{can_dequantize, dequantize};
use kestrel_gguf::reader::MAX_ARRAY_LEN;
use kestrel_gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetaType, MetaValue};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// What one parse did: parsed, rejected, or panicked (with the panic message).
#[derive(Debug, PartialEq)]
enum Outcome {
    Parsed,
    Rejected,
    Panicked(String),
}

/// Touch everything a loader would on a parsed file: every key, every tensor's bytes, and the
/// dequantized values of small tensors.
fn exercise(f: &GgufFile) {
    for (k, v) in &f.metadata {
        // Same entry (not `==`: a flipped byte may have made a float NaN).
        assert!(f.get(k).is_some_and(|g| std::ptr::eq(g, v)), "{k}");
        let _ = (
            v.as_u64(),
            v.as_f64(),
            v.as_str(),
            v.as_array().map(|a| a.len()),
        );
    }
    let _ = f.architecture();
    let _ = f.get_str_array("tokenizer.ggml.tokens");
    let _ = f.get_u64("general.alignment");
    for t in &f.tensors {
        assert_eq!(f.tensor(&t.name), Some(t));
        let data = f.tensor_data(t);
        assert_eq!(data.len() as u64, t.size, "{}", t.name);
        let n = t.n_elements();
        if can_dequantize(t.ty) && t.size <= 1 << 16 {
            let mut out = vec![0.0f32; n as usize];
            dequantize(t.ty, data, &mut out).unwrap_or_else(|e| {
                panic!("tensor {} parsed but does not dequantize: {e}", t.name)
            });
        }
    }
    let _ = f.data_bytes();
}

fn parse(bytes: Vec<u8>) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| {
        GgufFile::from_bytes(bytes).map(|f| exercise(&f)).is_ok()
    })) {
        Ok(true) => Outcome::Parsed,
        Ok(false) => Outcome::Rejected,
        Err(p) => Outcome::Panicked(
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        ),
    }
}

/// Counts of a family of cases, run on all cores.
#[derive(Default)]
struct Tally {
    cases: AtomicUsize,
    parsed: AtomicUsize,
    rejected: AtomicUsize,
    panics: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, label: impl FnOnce() -> String, outcome: Outcome) {
        self.cases.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Parsed => self.parsed.fetch_add(1, Ordering::Relaxed),
            Outcome::Rejected => self.rejected.fetch_add(1, Ordering::Relaxed),
            Outcome::Panicked(msg) => {
                self.panics
                    .lock()
                    .unwrap()
                    .push(format!("{}: {msg}", label()));
                0
            }
        };
    }

    fn cases(&self) -> usize {
        self.cases.load(Ordering::Relaxed)
    }

    fn report(&self, what: &str) {
        println!(
            "{what}: {} cases, {} parsed, {} rejected, {} panicked",
            self.cases(),
            self.parsed.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
            self.panics.lock().unwrap().len()
        );
    }

    fn assert_no_panics(&self, what: &str) {
        let p = self.panics.lock().unwrap();
        assert!(
            p.is_empty(),
            "{what}: {} panics, first: {:?}",
            p.len(),
            &p[..p.len().min(5)]
        );
    }
}

/// Run `f(i)` for `i` in `0..n` on all cores (interleaved, so costs that grow with `i` balance).
fn par_for(n: usize, f: impl Fn(usize) + Sync) {
    let threads = std::thread::available_parallelism()
        .map_or(2, |t| t.get())
        .min(n.max(1));
    std::thread::scope(|s| {
        for t in 0..threads {
            let f = &f;
            s.spawn(move || (t..n).step_by(threads).for_each(f));
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The synthetic file

fn synthetic_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_meta("general.architecture", "llama")
        .add_meta("general.name", "kestrel robustness ✓ ünïcode")
        .add_meta("general.alignment", MetaValue::U32(64))
        .add_meta("test.u8", MetaValue::U8(200))
        .add_meta("test.i8", MetaValue::I8(-5))
        .add_meta("test.u16", MetaValue::U16(65_000))
        .add_meta("test.i16", MetaValue::I16(-32_000))
        .add_meta("test.u32", MetaValue::U32(4_000_000_000))
        .add_meta("test.i32", MetaValue::I32(-2_000_000_000))
        .add_meta("test.u64", MetaValue::U64(u64::MAX))
        .add_meta("test.i64", MetaValue::I64(i64::MIN))
        .add_meta("test.f32", MetaValue::F32(-1.5e-7))
        .add_meta("test.f64", MetaValue::F64(std::f64::consts::PI))
        .add_meta("test.bool", true)
        .add_meta("test.empty", MetaValue::Array(MetaType::U32, vec![]))
        .add_str_array(
            "tokenizer.ggml.tokens",
            &["<s>", "</s>", "hello", "wörld", "", "▁x"],
        )
        .add_meta(
            "tokenizer.ggml.scores",
            MetaValue::Array(
                MetaType::F32,
                (0..6).map(|i| MetaValue::F32(-(i as f32))).collect(),
            ),
        )
        .add_meta(
            "test.nested",
            MetaValue::Array(
                MetaType::Array,
                vec![
                    MetaValue::Array(MetaType::I16, vec![MetaValue::I16(1), MetaValue::I16(-2)]),
                    MetaValue::Array(MetaType::Str, vec!["a".into(), "bc".into()]),
                    MetaValue::Array(
                        MetaType::Array,
                        vec![MetaValue::Array(MetaType::U8, vec![MetaValue::U8(7)])],
                    ),
                    MetaValue::Array(MetaType::Bool, vec![MetaValue::Bool(false)]),
                ],
            ),
        )
        .add_meta("test.last", "end");

    let mut rng = StdRng::seed_from_u64(7);
    let tensors: [(&str, &[u64], GgmlType); 7] = [
        ("token_embd.weight", &[64, 3], GgmlType::Q8_0),
        ("blk.0.attn_q.weight", &[256, 2], GgmlType::Q4_K),
        ("blk.0.attn_norm.weight", &[64], GgmlType::F32),
        ("blk.0.attn_k.weight", &[8, 4, 2], GgmlType::F16),
        ("blk.0.ffn_down.weight", &[256, 1], GgmlType::Q6_K),
        ("output.weight", &[16, 2], GgmlType::BF16),
        ("blk.0.ffn_up.weight", &[32, 1], GgmlType::IQ4_NL),
    ];
    for (name, shape, ty) in tensors {
        let size = ty.tensor_bytes(shape).unwrap() as usize;
        let data: Vec<u8> = (0..size).map(|_| rng.gen()).collect();
        w.add_tensor(name, shape, ty, data).unwrap();
    }
    w
}

fn synthetic() -> Vec<u8> {
    synthetic_writer().to_bytes()
}

/// Bytes a parse needs: up to the end of the last tensor's data.
fn required_len(f: &GgufFile) -> u64 {
    f.data_offset
        + f.tensors
            .iter()
            .map(|t| t.offset + t.size)
            .max()
            .unwrap_or(0)
}

#[test]
fn synthetic_file_truncated_at_every_offset() {
    let bytes = synthetic();
    let f = GgufFile::from_bytes(bytes.clone()).expect("the synthetic file parses");
    let need = required_len(&f) as usize;
    let t0 = Instant::now();
    let tally = Tally::default();
    let wrong = Mutex::new(Vec::new());
    par_for(bytes.len() + 1, |k| {
        let outcome = parse(bytes[..k].to_vec());
        // Cutting into anything the reader needs must be an error; cutting the final padding
        // after the last tensor's data is fine.
        let expect = if k < need {
            Outcome::Rejected
        } else {
            Outcome::Parsed
        };
        if !matches!(outcome, Outcome::Panicked(_)) && outcome != expect {
            wrong.lock().unwrap().push(k);
        }
        tally.record(|| format!("truncated at {k}"), outcome);
    });
    tally.report(&format!("synthetic ({} bytes) truncations", bytes.len()));
    println!("  {:.2?}", t0.elapsed());
    tally.assert_no_panics("synthetic truncations");
    let wrong = wrong.into_inner().unwrap();
    assert!(
        wrong.is_empty(),
        "truncations with the wrong outcome (need {need}): {wrong:?}"
    );
}

#[test]
fn synthetic_file_with_every_byte_changed() {
    let bytes = synthetic();
    const XORS: [u8; 6] = [0x01, 0x04, 0x10, 0x40, 0x80, 0xFF];
    const SETS: [u8; 4] = [0x00, 0xFF, 0x7F, 0x20];
    let t0 = Instant::now();
    let tally = Tally::default();
    par_for(bytes.len(), |i| {
        let variants = XORS.iter().map(|&x| bytes[i] ^ x).chain(SETS);
        for v in variants.filter(|&v| v != bytes[i]) {
            let mut b = bytes.clone();
            b[i] = v;
            tally.record(|| format!("byte {i} set to {v:#04x}"), parse(b));
        }
    });
    tally.report(&format!("synthetic ({} bytes) byte changes", bytes.len()));
    println!("  {:.2?}", t0.elapsed());
    tally.assert_no_panics("synthetic byte changes");
}

// ---------------------------------------------------------------------------------------------
// The real files

const MODELS: [&str; 2] = ["gemma3-270m", "qwen2.5-coder-0.5b"];

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

/// Encoded size of a metadata value (to locate the tensor table inside the header).
fn encoded_len(v: &MetaValue) -> usize {
    match v {
        MetaValue::Str(s) => 8 + s.len(),
        MetaValue::Array(_, items) => 12 + items.iter().map(encoded_len).sum::<usize>(),
        v => v.meta_type().scalar_size().unwrap(),
    }
}

/// The first model found is truncated at every offset below this; the others (same structure,
/// another tokenizer) every `SWEEP_STEP_OTHERS`-th, to keep the test within ~30 s on 2 cores.
const SWEEP_EVERY: usize = 128 * 1024;
const SWEEP_STEP_OTHERS: usize = 61;
const STRIDE: usize = 4099;
const FLIPS: usize = 300;

#[test]
fn real_files_truncated_and_flipped() {
    let mut total = 0;
    let t0 = Instant::now();
    for name in MODELS {
        let Some(path) = find_model(name) else {
            println!(
                "skipping {name}: not found in $KESTREL_HOME/models or ~/.cache/kestrel/models"
            );
            continue;
        };
        let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file_len = f.bytes().len();
        let header_end = f.data_offset as usize;
        let header = f.bytes()[..header_end].to_vec();
        let kv_end = 24
            + f.metadata
                .iter()
                .map(|(k, v)| 8 + k.len() + 4 + encoded_len(v))
                .sum::<usize>();
        println!(
            "{name}: {file_len} bytes, metadata ends at {kv_end}, tensor table ({} tensors) ends by {header_end}",
            f.tensors.len()
        );
        drop(f);

        // Truncations: every offset of the first 128 KiB, then a prime stride to the data.
        let t1 = Instant::now();
        let step = if total == 0 { 1 } else { SWEEP_STEP_OTHERS };
        let cuts: Vec<usize> = (0..SWEEP_EVERY.min(header_end))
            .step_by(step)
            .chain((SWEEP_EVERY..header_end).step_by(STRIDE))
            .collect();
        let tally = Tally::default();
        par_for(cuts.len(), |i| {
            let k = cuts[i];
            let outcome = parse(header[..k].to_vec());
            if outcome == Outcome::Parsed {
                tally
                    .panics
                    .lock()
                    .unwrap()
                    .push(format!("truncated at {k}: parsed"));
            }
            tally.record(|| format!("truncated at {k}"), outcome);
        });
        tally.report(&format!("{name} truncations"));
        println!("  {:.2?}", t1.elapsed());
        tally.assert_no_panics(&format!("{name} truncations"));
        total += tally.cases();

        // Byte flips: a third anywhere in the header, a third in the first 4 KiB (the general
        // metadata), a third in the tensor table. Full-length buffer, data left zero.
        let t1 = Instant::now();
        let mut rng = StdRng::seed_from_u64(0x6767_7566);
        let flips: Vec<(usize, u8)> = (0..FLIPS)
            .map(|j| {
                let pos = match j % 3 {
                    0 => rng.gen_range(0..header_end),
                    1 => rng.gen_range(0..4096.min(header_end)),
                    _ => rng.gen_range(kv_end.min(header_end - 1)..header_end),
                };
                (pos, rng.gen_range(1..=255u8))
            })
            .collect();
        let tally = Tally::default();
        par_for(flips.len(), |i| {
            let (pos, x) = flips[i];
            let mut b = vec![0u8; file_len];
            b[..header_end].copy_from_slice(&header);
            b[pos] ^= x;
            tally.record(|| format!("byte {pos} xor {x:#04x}"), parse(b));
        });
        tally.report(&format!("{name} byte flips"));
        println!("  {:.2?}", t1.elapsed());
        tally.assert_no_panics(&format!("{name} byte flips"));
        total += tally.cases();
    }
    println!(
        "real-file robustness: {total} cases in {:.2?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Descriptive errors on hand-made damage

fn err_of(bytes: Vec<u8>) -> (GgufError, String) {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("damaged file parsed"),
        Err(e) => {
            let msg = e.to_string();
            (e, msg)
        }
    }
}

/// Positions of a tensor's fields in the tensor table: (n_dims, type, offset); the dimensions
/// follow n_dims, the name ends where n_dims starts.
fn tensor_fields(bytes: &[u8], name: &str) -> (usize, usize, usize) {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat)
        .expect("tensor name")
        + pat.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * n_dims;
    (at, ty, ty + 4)
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A minimal hand-built header: magic, version, counts, then `body`.
fn raw_gguf(version: u32, n_tensors: u64, n_kv: u64, body: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b.extend_from_slice(body);
    b
}

fn kv_u32(key: &str, v: u32) -> Vec<u8> {
    let mut b = (key.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(&(MetaType::U32 as u32).to_le_bytes());
    b.extend_from_slice(&v.to_le_bytes());
    b
}

fn two_f32_tensors() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_meta("general.architecture", "llama");
    w.add_f32("a.weight", &[8], &[1.0; 8]).unwrap();
    w.add_f32("b.weight", &[8, 2], &[2.0; 16]).unwrap();
    w.to_bytes()
}

#[test]
fn errors_describe_the_damage() {
    // Bad magic.
    let mut b = synthetic();
    b[..4].copy_from_slice(b"GGML");
    let (e, m) = err_of(b);
    assert!(
        matches!(e, GgufError::BadMagic(_)) && m.contains("not a GGUF file"),
        "{m}"
    );

    // Version 1 (u32 counts, long obsolete) and a version from the future.
    for v in [1u32, 4] {
        let (e, m) = err_of(raw_gguf(v, 0, 0, &[]));
        assert!(
            matches!(e, GgufError::UnsupportedVersion(x) if x == v),
            "{m}"
        );
        assert!(m.contains(&format!("version {v}")), "{m}");
    }

    // Tensor offset past the end of the file: the error names the tensor.
    let mut b = two_f32_tensors();
    let (_, _, off) = tensor_fields(&b, "b.weight");
    put_u64(&mut b, off, 1 << 20);
    let (e, m) = err_of(b);
    assert!(
        matches!(e, GgufError::BadTensor { ref name, .. } if name == "b.weight"),
        "{m}"
    );
    assert!(m.contains("b.weight") && m.contains("past the end"), "{m}");

    // Data cut short: the last tensor runs past the end.
    let b = two_f32_tensors();
    let (_, m) = err_of(b[..b.len() - 40].to_vec());
    assert!(m.contains("b.weight") && m.contains("truncated"), "{m}");

    // Unknown tensor type id.
    let mut b = two_f32_tensors();
    let (_, ty, _) = tensor_fields(&b, "a.weight");
    b[ty..ty + 4].copy_from_slice(&4u32.to_le_bytes());
    let (_, m) = err_of(b);
    assert!(
        m.contains("a.weight") && m.contains("unknown ggml type id 4"),
        "{m}"
    );

    // Misaligned offset.
    let mut b = two_f32_tensors();
    let (_, _, off) = tensor_fields(&b, "b.weight");
    put_u64(&mut b, off, 33);
    let (_, m) = err_of(b);
    assert!(
        m.contains("b.weight") && m.contains("not aligned to 32"),
        "{m}"
    );

    // Overlapping tensors: b starts inside a.
    let mut b = two_f32_tensors();
    let (_, _, off) = tensor_fields(&b, "b.weight");
    put_u64(&mut b, off, 0);
    let (_, m) = err_of(b);
    assert!(
        m.contains("overlaps") && m.contains("a.weight") && m.contains("b.weight"),
        "{m}"
    );

    // Duplicate metadata key.
    let mut body = kv_u32("general.alignment", 32);
    body.extend(kv_u32("general.alignment", 64));
    let (e, m) = err_of(raw_gguf(3, 0, 2, &body));
    assert!(
        matches!(e, GgufError::BadMetadata { ref key, .. } if key == "general.alignment"),
        "{m}"
    );
    assert!(
        m.contains("duplicate key") && m.contains("general.alignment"),
        "{m}"
    );

    // Duplicate tensor name (the names differ in one byte).
    let mut b = two_f32_tensors();
    let (at, _, _) = tensor_fields(&b, "b.weight");
    b[at - 8] = b'a';
    let (_, m) = err_of(b);
    assert!(
        m.contains("duplicate tensor name") && m.contains("a.weight"),
        "{m}"
    );

    // Unknown metadata value type.
    let mut body = kv_u32("x.y", 1);
    body[8 + 3..8 + 3 + 4].copy_from_slice(&13u32.to_le_bytes());
    let (_, m) = err_of(raw_gguf(3, 0, 1, &body));
    assert!(
        m.contains("x.y") && m.contains("unknown value type 13"),
        "{m}"
    );

    // Alignment that is not a power of two.
    let (_, m) = err_of(raw_gguf(3, 0, 1, &kv_u32("general.alignment", 48)));
    assert!(
        m.contains("general.alignment") && m.contains("power of two"),
        "{m}"
    );

    // Counts that cannot fit.
    let (_, m) = err_of(raw_gguf(3, 0, u64::MAX, &[]));
    assert!(m.contains("metadata count"), "{m}");
    let (_, m) = err_of(raw_gguf(3, u64::MAX, 0, &[]));
    assert!(m.contains("tensor count"), "{m}");

    // A huge array count, an allowed count with too few bytes, a bad bool, invalid UTF-8.
    for (n, want) in [
        (1u64 << 60, "at most 16777216 allowed"),
        (MAX_ARRAY_LEN, "truncated"),
    ] {
        let mut body = (5u64).to_le_bytes().to_vec();
        body.extend_from_slice(b"arr.x");
        body.extend_from_slice(&(MetaType::Array as u32).to_le_bytes());
        body.extend_from_slice(&(MetaType::U64 as u32).to_le_bytes());
        body.extend_from_slice(&n.to_le_bytes());
        let (_, m) = err_of(raw_gguf(3, 0, 1, &body));
        assert!(m.contains("arr.x") && m.contains(want), "{m}");
    }

    let mut w = GgufWriter::new();
    w.add_meta("flag", true);
    let mut b = w.to_bytes();
    let pos = b.windows(4).position(|x| x == b"flag").unwrap() + 4 + 4;
    b[pos] = 2;
    let (_, m) = err_of(b);
    assert!(m.contains("flag") && m.contains("bool byte 2"), "{m}");

    let mut w = GgufWriter::new();
    w.add_meta("name", "abc");
    let mut b = w.to_bytes();
    let pos = b.windows(3).position(|x| x == b"abc").unwrap();
    b[pos] = 0xFF;
    let (_, m) = err_of(b);
    assert!(m.contains("UTF-8") && m.contains("name"), "{m}");

    // Bad shapes: 5 dimensions, a zero dimension, a row that is not whole blocks.
    let mut w = GgufWriter::new();
    w.add_tensor("q.weight", &[32, 2], GgmlType::Q8_0, vec![0; 68])
        .unwrap();
    let good = w.to_bytes();
    let (nd, _, _) = tensor_fields(&good, "q.weight");
    let mut b = good.clone();
    b[nd..nd + 4].copy_from_slice(&5u32.to_le_bytes());
    let (_, m) = err_of(b);
    assert!(m.contains("q.weight") && m.contains("5 dimensions"), "{m}");
    let mut b = good.clone();
    put_u64(&mut b, nd + 12, 0);
    let (_, m) = err_of(b);
    assert!(
        m.contains("q.weight") && m.contains("dimension 1 is 0"),
        "{m}"
    );
    let mut b = good;
    put_u64(&mut b, nd + 4, 48);
    let (_, m) = err_of(b);
    assert!(
        m.contains("q.weight") && m.contains("not a multiple of the Q8_0 block size 32"),
        "{m}"
    );
}

/// Regression: counts are bounded by the bytes left in the file, and a damaged count in a large
/// file used to size a `Vec` of 32-byte values up front (34 GB for this 1 GiB buffer), aborting
/// the process on allocation failure instead of returning an error.
#[test]
fn huge_array_count_in_a_large_file_is_an_error_not_an_abort() {
    let mut w = GgufWriter::new();
    w.add_meta(
        "arr",
        MetaValue::Array(MetaType::U8, vec![MetaValue::U8(1)]),
    );
    let header = w.to_bytes();
    let count_at = header.windows(3).position(|x| x == b"arr").unwrap() + 3 + 4 + 4;
    let len = 1usize << 30;
    // Zeroed allocation: pages are only mapped when touched, so this costs almost nothing.
    let mut big = vec![0u8; len];
    big[..header.len()].copy_from_slice(&header);
    put_u64(&mut big, count_at, (len - count_at - 8) as u64);
    let (_, m) = err_of(big);
    assert!(m.contains("arr") && m.contains("allowed"), "{m}");

    // Many metadata entries claimed in a large file: fails on the first duplicate key without
    // allocating for the claimed count.
    let mut big = vec![0u8; len];
    big[..24].copy_from_slice(&raw_gguf(3, 0, (len as u64 - 24) / 13, &[]));
    let (_, m) = err_of(big);
    assert!(m.contains("duplicate key"), "{m}");
}
