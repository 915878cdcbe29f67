//! Unit tests of the reference code that do not need the gguf-py fixtures: the activation
//! quantizer rules of §5 / §8, hand-built blocks, and the size errors.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// N(0,1)-ish values scaled by e^U(-8,8), like the spec's §8 activation check.
fn activations(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let scale = rng.gen_range(-8.0f32..8.0).exp();
    (0..n)
        .map(|_| {
            // Sum of uniforms: cheap, roughly normal.
            let g: f32 = (0..4).map(|_| rng.gen_range(-1.0f32..1.0)).sum();
            g * scale
        })
        .collect()
}

fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

#[test]
fn q8_0_rounds_ties_away_from_zero_and_stores_f16_d() {
    // amax = 127 gives d = 1 and id = 1 exactly, so x·id keeps the .5 ties.
    let mut x = [0.0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -2.5;
    x[3] = 0.5;
    x[4] = -0.49;
    x[5] = -127.0;
    let mut b = [0u8; 34];
    quantize_q8_0(&x, &mut b);
    assert_eq!(u16::from_le_bytes([b[0], b[1]]), f32_to_f16(1.0));
    let q: Vec<i8> = b[2..].iter().map(|&v| v as i8).collect();
    assert_eq!(&q[..6], &[127, 3, -3, 1, 0, -127]);
    assert!(q[6..].iter().all(|&v| v == 0));

    let mut z = [0xAAu8; 34];
    quantize_q8_0(&[0.0; 32], &mut z);
    assert_eq!(z, [0u8; 34]);
}

#[test]
fn q8_1_matches_q8_0_and_s_uses_the_unrounded_d() {
    let mut rng = StdRng::seed_from_u64(0x51);
    let (mut differs_from_rounded_d, n_blocks) = (0, 2000);
    for _ in 0..n_blocks {
        let x = activations(&mut rng, 32);
        let (mut b0, mut b1) = ([0u8; 34], [0u8; 36]);
        quantize_q8_0(&x, &mut b0);
        quantize_q8_1(&x, &mut b1);
        assert_eq!(b0[0..2], b1[0..2], "d");
        assert_eq!(b0[2..34], b1[4..36], "codes");
        let sum: i32 = b1[4..].iter().map(|&q| q as i8 as i32).sum();
        let d_f32 = amax(&x) / 127.0;
        let s = u16::from_le_bytes([b1[2], b1[3]]);
        assert_eq!(s, f32_to_f16(d_f32 * sum as f32), "s = fp16(d_f32 · Σq)");
        let d_f16 = f16_to_f32(u16::from_le_bytes([b1[0], b1[1]]));
        if s != f32_to_f16(d_f16 * sum as f32) {
            differs_from_rounded_d += 1;
        }
    }
    // The rule is observable: with the f16 d, a good share of blocks would get another s.
    assert!(
        differs_from_rounded_d > n_blocks / 20,
        "{differs_from_rounded_d}"
    );

    let mut z = [0xAAu8; 36];
    quantize_q8_1(&[0.0; 32], &mut z);
    assert_eq!(z, [0u8; 36]);
}

fn q8k_fields(b: &[u8]) -> (f32, Vec<i8>, Vec<i16>) {
    let d = f32::from_le_bytes(b[0..4].try_into().unwrap());
    let qs = b[4..260].iter().map(|&q| q as i8).collect();
    let bs = b[260..292]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    (d, qs, bs)
}

#[test]
fn q8_k_sign_of_d_follows_the_largest_magnitude_element() {
    let mut x = vec![0.25f32; 256];
    x[10] = 3.0; // largest magnitude, positive → maps to -127, d < 0
    x[20] = -3.0; // same magnitude later: the first one wins
    let mut b = vec![0u8; 292];
    quantize_q8_k(&x, &mut b);
    let (d, qs, _) = q8k_fields(&b);
    assert!(d < 0.0, "d = {d}");
    assert_eq!(d, 1.0 / (-127.0 / 3.0));
    assert_eq!((qs[10], qs[20]), (-127, 127));

    x[10] = -3.0;
    x[20] = 3.0;
    quantize_q8_k(&x, &mut b);
    let (d, qs, _) = q8k_fields(&b);
    assert!(d > 0.0, "d = {d}");
    assert_eq!((qs[10], qs[20]), (-127, 127));
}

#[test]
fn q8_k_rounds_ties_to_even() {
    // vmax = 127 gives iscale = -1 exactly, so -x keeps its .5 ties.
    let mut x = vec![0.0f32; 256];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = 3.5;
    x[3] = -0.5;
    x[4] = -1.5;
    let mut b = vec![0u8; 292];
    quantize_q8_k(&x, &mut b);
    let (d, qs, bs) = q8k_fields(&b);
    assert_eq!(d, -1.0);
    assert_eq!(&qs[..5], &[-127, -2, -4, 0, 2]);
    assert_eq!(bs[0], -127 - 2 - 4 + 2);
}

#[test]
fn q8_k_codes_bsums_round_trip_and_zero_block() {
    let mut rng = StdRng::seed_from_u64(0x8C);
    let n_blocks = 512;
    let mut x = Vec::new();
    for _ in 0..n_blocks {
        x.extend(activations(&mut rng, 256));
    }
    // One all-zero block in the middle; the output buffer starts dirty.
    x[256 * 7..256 * 8].fill(0.0);
    let mut b = vec![0x5Au8; n_blocks * 292];
    quantize_q8_k(&x, &mut b);
    let mut y = vec![0.0f32; x.len()];
    dequantize(GgmlType::Q8_K, &b, &mut y).unwrap();

    let mut negative_d = 0;
    for (k, (blk, xs)) in b.chunks_exact(292).zip(x.chunks_exact(256)).enumerate() {
        let (d, qs, bs) = q8k_fields(blk);
        if k == 7 {
            assert_eq!(blk, &[0u8; 292][..], "zero block is all zero bytes");
            continue;
        }
        assert!(qs.iter().all(|&q| (-127..=127).contains(&q)), "block {k}");
        for (j, &s) in bs.iter().enumerate() {
            let want: i32 = qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            assert_eq!(s as i32, want, "block {k} bsum {j}");
        }
        // The largest-magnitude element maps to -127, so the sign of d is opposite to it.
        let first_max = xs.iter().copied().find(|v| v.abs() == amax(xs)).unwrap();
        assert_eq!(d < 0.0, first_max > 0.0, "block {k}");
        negative_d += (d < 0.0) as usize;
        // Round-trip error 0.5·|d| up to f32 rounding.
        for (i, (&xv, &yv)) in xs.iter().zip(&y[256 * k..]).enumerate() {
            let err = (xv - yv).abs();
            assert!(
                err <= 0.5 * d.abs() * 1.0001,
                "block {k} elem {i}: {xv} vs {yv}, d {d}"
            );
        }
    }
    assert!(
        negative_d > n_blocks / 4 && negative_d < 3 * n_blocks / 4,
        "{negative_d}"
    );
}

#[test]
fn quantizers_never_emit_minus_128_on_extreme_inputs() {
    let mut blocks: Vec<Vec<f32>> = Vec::new();
    let mut tiny = vec![0.0f32; 256];
    tiny[0] = f32::from_bits(1); // 1/d overflows to infinity
    tiny[1] = -f32::from_bits(1);
    blocks.push(tiny);
    let mut inf = vec![1.0f32; 256];
    inf[3] = f32::NEG_INFINITY;
    blocks.push(inf);
    let mut nan = vec![-2.0f32; 256];
    nan[5] = f32::NAN;
    blocks.push(nan);
    blocks.push(vec![f32::MAX; 256]);
    for x in &blocks {
        let (mut a, mut b, mut c) = (vec![0u8; 8 * 34], vec![0u8; 8 * 36], vec![0u8; 292]);
        quantize_q8_0(x, &mut a);
        quantize_q8_1(x, &mut b);
        quantize_q8_k(x, &mut c);
        let codes = a
            .chunks_exact(34)
            .flat_map(|b| &b[2..])
            .chain(b.chunks_exact(36).flat_map(|b| &b[4..]))
            .chain(&c[4..260]);
        for &q in codes {
            assert_ne!(q as i8, -128);
        }
    }
}

#[test]
#[should_panic(expected = "quantize Q8_0")]
fn quantizer_size_mismatch_panics_with_a_message() {
    quantize_q8_0(&[0.0; 32], &mut [0u8; 33]);
}

#[test]
fn dequantize_hand_built_blocks() {
    // Q4_0: byte k low nibble = element k, high nibble = element k+16.
    let mut b = vec![0u8; 18];
    b[0..2].copy_from_slice(&f32_to_f16(0.5).to_le_bytes());
    b[2] = 0xF0; // element 0 → 0, element 16 → 15
    let mut y = [0.0f32; 32];
    dequantize(GgmlType::Q4_0, &b, &mut y).unwrap();
    assert_eq!((y[0], y[16], y[1]), (-4.0, 3.5, -4.0));

    // Q5_1: qh bit i is bit 4 of element i; x = d·c + m.
    let mut b = vec![0u8; 24];
    b[0..2].copy_from_slice(&f32_to_f16(2.0).to_le_bytes());
    b[2..4].copy_from_slice(&f32_to_f16(-1.0).to_le_bytes());
    b[4..8].copy_from_slice(&(1u32 << 17).to_le_bytes());
    b[8 + 1] = 0x3 << 4; // element 17 low bits 3
    dequantize(GgmlType::Q5_1, &b, &mut y).unwrap();
    assert_eq!((y[17], y[1], y[0]), (2.0 * 19.0 - 1.0, -1.0, -1.0));

    // Q6_K: element 128 + 64 + 5 (h=1, s=2): high nibble of ql[64+5], bits 4-5 of qh[32+5].
    let mut b = vec![0u8; 210];
    b[64 + 5] = 0xA0;
    b[128 + 32 + 5] = 0b10 << 4;
    b[192 + 12] = (-3i8) as u8; // scale of sub-block 12 = (128+64+5)/16
    b[208..210].copy_from_slice(&f32_to_f16(0.25).to_le_bytes());
    let mut y = vec![0.0f32; 256];
    dequantize(GgmlType::Q6_K, &b, &mut y).unwrap();
    assert_eq!(y[197], (0.25 * -3.0) * ((0x0A | 0b10 << 4) - 32) as f32);
    assert_eq!(y[0], 0.0); // scale 0 elsewhere

    // BF16 and F16 widen exactly.
    let mut y = [0.0f32; 2];
    dequantize(GgmlType::BF16, &[0x80, 0x3F, 0x00, 0xC0], &mut y).unwrap();
    assert_eq!(y, [1.0, -2.0]);
    dequantize(GgmlType::F16, &[0x00, 0x3C, 0x01, 0x00], &mut y).unwrap();
    assert_eq!(y, [1.0, 2f32.powi(-24)]);
}

#[test]
fn dequantize_size_errors_name_type_and_sizes() {
    let mut y = vec![0.0f32; 32];
    let e = dequantize(GgmlType::Q4_K, &[0u8; 144], &mut y).unwrap_err();
    assert!(
        e.contains("Q4_K") && e.contains("32") && e.contains("256"),
        "{e}"
    );
    let e = dequantize(GgmlType::Q8_0, &[0u8; 33], &mut y).unwrap_err();
    assert!(
        e.contains("Q8_0") && e.contains("34") && e.contains("33"),
        "{e}"
    );
    let e = dequantize(GgmlType::IQ2_XXS, &[0u8; 66], &mut [0.0; 256]).unwrap_err();
    assert!(e.contains("IQ2_XXS") && e.contains("not supported"), "{e}");
    let e = dequantize(GgmlType::Q8_1, &[0u8; 36], &mut y).unwrap_err();
    assert!(e.contains("Q8_1"), "{e}");
    // Zero elements from zero bytes is fine.
    dequantize(GgmlType::Q6_K, &[], &mut []).unwrap();
}

#[test]
fn dequantize_row_picks_the_row_and_checks_bounds() {
    // 3 rows × 64 columns of Q8_0 (2 blocks per row), d = row + 1, codes = column index.
    let mut t = Vec::new();
    for r in 0..3u8 {
        for blk in 0..2u8 {
            t.extend_from_slice(&f32_to_f16((r + 1) as f32).to_le_bytes());
            t.extend((0..32u8).map(|i| 32 * blk + i));
        }
    }
    let mut y = vec![0.0f32; 64];
    dequantize_row(GgmlType::Q8_0, &t, 2, 64, &mut y).unwrap();
    assert!(y.iter().enumerate().all(|(i, &v)| v == 3.0 * i as f32));

    let e = dequantize_row(GgmlType::Q8_0, &t, 3, 64, &mut y).unwrap_err();
    assert!(
        e.contains("row 3") && e.contains("Q8_0") && e.contains("204"),
        "{e}"
    );
    let e = dequantize_row(GgmlType::Q8_0, &t, usize::MAX, 64, &mut y).unwrap_err();
    assert!(e.contains("past the end"), "{e}");
    let e = dequantize_row(GgmlType::Q8_0, &t, 0, 48, &mut y[..48]).unwrap_err();
    assert!(e.contains("48") && e.contains("block size 32"), "{e}");
    let e = dequantize_row(GgmlType::Q8_0, &t, 0, 64, &mut y[..10]).unwrap_err();
    assert!(e.contains("10"), "{e}");
}
