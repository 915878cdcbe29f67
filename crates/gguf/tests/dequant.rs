//! Bit-exactness of the reference dequantizers and the Q8_0 quantizer against PyPI gguf 0.19.0.
//! Fixtures are made by tools/gen_quant_fixtures.py (format described there).

use std::path::PathBuf;

use kestrel_gguf::quant::{self, dequantize, dequantize_row};
use kestrel_gguf::GgmlType;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run tools/gen_quant_fixtures.py)", path.display()))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

struct DequantFixture {
    n_blocks: usize,
    raw: Vec<u8>,
    expected: Vec<f32>,
}

fn load_dequant(ty: GgmlType) -> DequantFixture {
    let b = fixture(&format!("dequant_{}.bin", ty.name()));
    assert_eq!(&b[0..4], b"KQDQ", "{ty}: bad fixture magic");
    assert_eq!(u32_at(&b, 4), ty.id(), "{ty}: fixture holds another type");
    let n_blocks = u32_at(&b, 8) as usize;
    let (bytes, elems) = (u32_at(&b, 12) as usize, u32_at(&b, 16) as usize);
    assert_eq!(
        (elems, bytes),
        (ty.block_size(), ty.type_size()),
        "{ty}: block geometry"
    );
    let raw_end = 20 + n_blocks * bytes;
    assert_eq!(
        b.len(),
        raw_end + n_blocks * elems * 4,
        "{ty}: fixture length"
    );
    DequantFixture {
        n_blocks,
        raw: b[20..raw_end].to_vec(),
        expected: f32s(&b[raw_end..]),
    }
}

const TYPES: [GgmlType; 14] = {
    use GgmlType::*;
    [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
    ]
};

/// Count elements whose f32 bits differ, printing the first few.
fn bit_diffs(ty: GgmlType, what: &str, got: &[f32], want: &[f32]) -> usize {
    let mut n = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.to_bits() != w.to_bits() {
            if n < 5 {
                eprintln!("{ty} {what}: element {i} (block {}): got {g:e} ({:#010x}), gguf {w:e} ({:#010x})",
                    i / ty.block_size(), g.to_bits(), w.to_bits());
            }
            n += 1;
        }
    }
    n
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let mut failures = Vec::new();
    let (mut total_blocks, mut total_elems) = (0, 0);
    for ty in TYPES {
        let f = load_dequant(ty);
        let mut got = vec![f32::NAN; f.expected.len()];
        dequantize(ty, &f.raw, &mut got).unwrap();
        let diffs = bit_diffs(ty, "dequantize", &got, &f.expected);
        let non_finite = f.expected.iter().filter(|v| !v.is_finite()).count();
        println!(
            "{:>5}: {:>4} blocks, {:>6} elements, {diffs} with differing f32 bits ({non_finite} expected non-finite)",
            ty.name(),
            f.n_blocks,
            got.len()
        );
        total_blocks += f.n_blocks;
        total_elems += got.len();
        if diffs != 0 {
            failures.push(format!("{ty}: {diffs} elements differ"));
        }
    }
    println!(
        "{} types, {total_blocks} blocks, {total_elems} elements compared",
        TYPES.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn dequantize_row_matches_gguf_py_on_fixture_rows() {
    // View each fixture as a 2-D tensor of rows of 4 blocks (16 for the plain float types)
    // and check every row against the matching slice of the expected output.
    for ty in TYPES {
        let f = load_dequant(ty);
        let blocks_per_row = if ty.is_quantized() { 4 } else { 16 };
        let n_cols = blocks_per_row * ty.block_size();
        let n_rows = f.n_blocks / blocks_per_row;
        let mut row = vec![0.0f32; n_cols];
        for r in 0..n_rows {
            dequantize_row(ty, &f.raw, r, n_cols, &mut row).unwrap();
            let want = &f.expected[r * n_cols..(r + 1) * n_cols];
            assert_eq!(
                bit_diffs(ty, "dequantize_row", &row, want),
                0,
                "{ty} row {r}"
            );
        }
        let e = dequantize_row(ty, &f.raw, n_rows, n_cols, &mut row).unwrap_err();
        assert!(
            e.contains(ty.name()) && e.contains(&format!("row {n_rows}")),
            "{e}"
        );
    }
}

#[test]
fn dequantize_rejects_truncated_fixture_data() {
    for ty in TYPES {
        let f = load_dequant(ty);
        let mut got = vec![0.0f32; f.expected.len()];
        let e = dequantize(ty, &f.raw[..f.raw.len() - 1], &mut got).unwrap_err();
        assert!(
            e.contains(ty.name()) && e.contains(&(f.raw.len() - 1).to_string()),
            "{e}"
        );
    }
}

fn load_q8_0_quant() -> (Vec<f32>, Vec<u8>) {
    let b = fixture("quant_Q8_0.bin");
    assert_eq!(&b[0..4], b"KQQ8");
    let n = u32_at(&b, 4) as usize;
    let x_end = 8 + n * 32 * 4;
    assert_eq!(b.len(), x_end + n * 34);
    (f32s(&b[8..x_end]), b[x_end..].to_vec())
}

#[test]
fn quantize_q8_0_matches_gguf_py_byte_for_byte() {
    let (x, want) = load_q8_0_quant();
    let mut got = vec![0u8; want.len()];
    quant::quantize_q8_0(&x, &mut got);
    let bad: Vec<usize> = (0..want.len() / 34)
        .filter(|&k| got[34 * k..34 * k + 34] != want[34 * k..34 * k + 34])
        .collect();
    println!(
        "Q8_0 quantize: {} blocks, {} differ from gguf.quantize",
        want.len() / 34,
        bad.len()
    );
    for &k in bad.iter().take(3) {
        eprintln!(
            "block {k}: got {:?}\n        want {:?}",
            &got[34 * k..34 * k + 34],
            &want[34 * k..34 * k + 34]
        );
    }
    assert!(bad.is_empty());

    // Q8_1 (no gguf-py quantizer) must carry the same d and codes.
    let mut q81 = vec![0u8; want.len() / 34 * 36];
    quant::quantize_q8_1(&x, &mut q81);
    for (k, (a, b)) in q81.chunks_exact(36).zip(want.chunks_exact(34)).enumerate() {
        assert_eq!(a[0..2], b[0..2], "Q8_1 d, block {k}");
        assert_eq!(a[4..], b[2..], "Q8_1 codes, block {k}");
    }
}
