//! The SIMD activation quantizers write exactly the planes that the gguf reference quantizers
//! give (split into planes): every code, scale, sum and bsum bit-identical.

use kestrel_cpu::quant_dot::{self, ActFormat, Acts, Layout, SimdLevel};
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
        for (cols, n) in [(256, 1), (96 * 8, 3), (4864, 5)] {
            if cols % fmt.block() != 0 {
                continue;
            }
            let x = rows(cols, n, &mut rng);
            let fast = Acts::new(fmt, &x, n, cols, Layout::Planes);
            let slow = Acts::new(fmt, &x, n, cols, Layout::PlanesReference);
            let what = format!("{fmt:?} cols {cols}");
            assert_eq!(fast.qs(), slow.qs(), "{what}: codes");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast.d), bits(&slow.d), "{what}: d");
            assert_eq!(bits(&fast.s), bits(&slow.s), "{what}: s");
            assert_eq!(fast.bsums, slow.bsums, "{what}: bsums");
        }
    }
}
