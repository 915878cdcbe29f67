//! Activation quantizers: the SIMD planes equal the planes split from the scalar quantizers
//! (llama.cpp's x86 rules) byte for byte, in every code form; and those rules differ from the
//! gguf reference quantizers only where they must (rounding ties, one-ulp products, the sign of
//! a Q8_K block whose largest magnitude occurs with both signs).

use kestrel_cpu::quant_dot::acts::{
    quantize_row_q8_0, quantize_row_q8_1, quantize_row_q8_k, Q8kSign,
};
use kestrel_cpu::quant_dot::{self, ActFormat, Acts, Codes, Layout, SimdLevel};
use kestrel_gguf::quant::{f16_to_f32, quantize_q8_0, quantize_q8_1, quantize_q8_k};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Random rows with varied block magnitudes, plus blocks of exact rounding ties, zeros,
/// repeated extremes of both signs and a tiny-magnitude block.
fn rows(cols: usize, n: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut x = vec![0f32; cols * n];
    for (g, blk) in x.chunks_mut(32).enumerate() {
        match g % 7 {
            // amax 127 → d = 1 (Q8_0) / iscale = ±1 (Q8_K): k + 0.5 are exact ties.
            0 => {
                for (i, v) in blk.iter_mut().enumerate() {
                    *v = (i as f32 - 16.0) + 0.5;
                }
                blk[3] = 127.0;
            }
            1 => {}
            2 => {
                blk.fill(-3.0);
                blk[7] = 3.0;
            }
            3 => blk
                .iter_mut()
                .for_each(|v| *v = rng.gen_range(-1e-30f32..1e-30)),
            _ => {
                let s = rng.gen_range(-8.0f32..8.0).exp();
                blk.iter_mut()
                    .for_each(|v| *v = rng.gen_range(-1.0f32..1.0) * s);
            }
        }
    }
    x
}

#[test]
fn simd_planes_equal_reference_planes() {
    if quant_dot::detected() < SimdLevel::Avx2 {
        eprintln!("no AVX2: nothing to compare");
        return;
    }
    let mut rng = StdRng::seed_from_u64(11);
    for fmt in [ActFormat::Q8_0, ActFormat::Q8_1, ActFormat::Q8_K] {
        let forms: &[Codes] = match fmt {
            ActFormat::Q8_K => &[Codes::Plain],
            _ => &[
                Codes::Plain,
                Codes::Biased,
                Codes::LaneOffset(8),
                Codes::LaneOffset(16),
                Codes::LaneOffset(128),
            ],
        };
        for (cols, n) in [(256, 1), (96 * 8, 3), (4864, 5), (512, 13)] {
            if cols % fmt.block() != 0 {
                continue;
            }
            let x = rows(cols, n, &mut rng);
            for &codes in forms {
                for n_x4 in [0, n / 4 * 4] {
                    let fast = Acts::build(fmt, &x, n, cols, Layout::Planes, n_x4, codes);
                    let slow = Acts::build(fmt, &x, n, cols, Layout::PlanesReference, n_x4, codes);
                    let what = format!("{fmt:?} {codes:?} cols {cols} n_x4 {n_x4}");
                    assert_eq!(fast.qs(), slow.qs(), "{what}: codes");
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&fast.d), bits(&slow.d), "{what}: d");
                    assert_eq!(bits(&fast.s), bits(&slow.s), "{what}: s");
                    assert_eq!(fast.bsums, slow.bsums, "{what}: bsums");
                    assert_eq!(fast.qoff, slow.qoff, "{what}: qoff");
                    assert_eq!(bits(&fast.d4), bits(&slow.d4), "{what}: d4");
                    assert_eq!(bits(&fast.s4), bits(&slow.s4), "{what}: s4");
                    assert_eq!(fast.lane_qs, slow.lane_qs, "{what}: lane_qs");
                    assert_eq!(bits(&fast.lane_bp), bits(&slow.lane_bp), "{what}: lane_bp");
                    assert_eq!(bits(&fast.lane_d), bits(&slow.lane_d), "{what}: lane_d");
                }
            }
        }
    }
}

/// The planes layouts hold the blocks' codes in the requested form.
#[test]
fn code_forms_hold_the_same_codes() {
    let mut rng = StdRng::seed_from_u64(5);
    let (cols, n) = (512, 2);
    let x = rows(cols, n, &mut rng);
    let plain = Acts::build(
        ActFormat::Q8_0,
        &x,
        n,
        cols,
        Layout::PlanesReference,
        0,
        Codes::Plain,
    );
    let biased = Acts::build(
        ActFormat::Q8_0,
        &x,
        n,
        cols,
        Layout::PlanesReference,
        0,
        Codes::Biased,
    );
    let off = Acts::build(
        ActFormat::Q8_0,
        &x,
        n,
        cols,
        Layout::PlanesReference,
        0,
        Codes::LaneOffset(16),
    );
    for (i, (&p, &b)) in plain.qs().iter().zip(biased.qs()).enumerate() {
        assert_eq!(p as u8 ^ 0x80, b as u8, "byte {i}");
    }
    assert_eq!(plain.qs(), off.qs());
    let nb = cols / 32;
    for t in 0..n {
        for blk in 0..nb {
            for k in 0..8 {
                let base = t * plain.qs_stride + 32 * blk + 4 * k;
                let sum: i32 = plain.qs()[base..base + 4].iter().map(|&q| q as i32).sum();
                assert_eq!(off.qoff[(t * nb + blk) * 8 + k], -16 * sum);
            }
        }
    }
}

/// Q8_0 / Q8_1: llama.cpp's x86 rule (`x · (127/amax)`, ties to even) against the gguf reference
/// (`x · (1/d)`, ties away from zero): the same `d`, and codes that differ by at most one, only
/// where `x · 127/amax` lies within a few ulps of a half-integer.
#[test]
fn x86_q8_rule_differs_from_the_reference_only_at_ties() {
    let mut rng = StdRng::seed_from_u64(7);
    let cols = 32 * 700;
    let x = rows(cols, 1, &mut rng);
    let (mut a, mut b) = (vec![0u8; cols / 32 * 34], vec![0u8; cols / 32 * 34]);
    quantize_row_q8_0(&x, &mut a);
    quantize_q8_0(&x, &mut b);
    let mut differ = 0;
    for (blk, (xa, (ba, bb))) in x.chunks(32).zip(a.chunks(34).zip(b.chunks(34))).enumerate() {
        assert_eq!(ba[0..2], bb[0..2], "block {blk}: d");
        let amax = xa.iter().fold(0f32, |m, v| m.max(v.abs()));
        for i in 0..32 {
            let (ca, cb) = (ba[2 + i] as i8 as i32, bb[2 + i] as i8 as i32);
            if ca != cb {
                differ += 1;
                assert!((ca - cb).abs() == 1, "block {blk} elem {i}: {ca} vs {cb}");
                let v = xa[i] as f64 * 127.0 / amax as f64;
                let frac = (v.abs() - v.abs().floor() - 0.5).abs();
                assert!(frac < 1e-5, "block {blk} elem {i}: {v} is not near a tie");
            }
        }
    }
    assert!(differ > 0, "the tie blocks should round differently");
    // Q8_1: the same codes as Q8_0, and `s = f16(d · Σq)` from the x86 codes.
    let mut c = vec![0u8; cols / 32 * 36];
    quantize_row_q8_1(&x, &mut c);
    let mut r = vec![0u8; cols / 32 * 36];
    quantize_q8_1(&x, &mut r);
    for (blk, (q1, q0)) in c.chunks(36).zip(a.chunks(34)).enumerate() {
        assert_eq!(q1[0..2], q0[0..2]);
        assert_eq!(q1[4..36], q0[2..34], "block {blk}");
        let sum: i32 = q1[4..36].iter().map(|&q| q as i8 as i32).sum();
        let amax = x[32 * blk..32 * blk + 32]
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()));
        let s = f16_to_f32(u16::from_le_bytes([q1[2], q1[3]]));
        assert_eq!(s, half::f16::from_f32(amax / 127.0 * sum as f32).to_f32());
    }
}

/// Q8_K: the reference rule equals the gguf reference quantizer; the interleaved quantizer's rule
/// differs only in blocks whose largest magnitude occurs with both signs, by the sign.
#[test]
fn q8_k_rules() {
    let mut rng = StdRng::seed_from_u64(9);
    let cols = 256 * 40;
    let mut x = rows(cols, 1, &mut rng);
    // Blocks where +amax comes after −amax.
    for blk in x.chunks_mut(256).step_by(3) {
        let m = blk.iter().fold(0f32, |m, v| m.max(v.abs())) + 1.0;
        blk[10] = -m;
        blk[200] = m;
    }
    let mut a = vec![0u8; cols / 256 * 292];
    let mut r = vec![0u8; cols / 256 * 292];
    let mut p = vec![0u8; cols / 256 * 292];
    quantize_row_q8_k(&x, &mut a, Q8kSign::First);
    quantize_q8_k(&x, &mut r);
    quantize_row_q8_k(&x, &mut p, Q8kSign::PreferPositive);
    assert_eq!(a, r);
    for (blk, ((xb, pa), pp)) in x
        .chunks(256)
        .zip(a.chunks(292))
        .zip(p.chunks(292))
        .enumerate()
    {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let both = xb.contains(&amax) && xb.contains(&-amax);
        if !both {
            assert_eq!(pa, pp, "block {blk}");
            continue;
        }
        let da = f32::from_le_bytes([pa[0], pa[1], pa[2], pa[3]]);
        let dp = f32::from_le_bytes([pp[0], pp[1], pp[2], pp[3]]);
        assert!(dp < 0.0, "block {blk}: +amax maps to −127");
        if da > 0.0 {
            assert_eq!(da, -dp, "block {blk}");
            for i in 0..256 {
                let (ca, cp) = (pa[4 + i] as i8 as i32, pp[4 + i] as i8 as i32);
                // Rounding to even is symmetric: the codes flip sign.
                assert_eq!(ca, -cp, "block {blk} elem {i}");
            }
        }
    }
}
