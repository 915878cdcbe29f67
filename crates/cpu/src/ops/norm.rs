//! RMS norm, as ggml computes it: each square in f32, summed in order in f64,
//! `1/sqrtf(mean + eps)` in f32, `x * scale` then `* w` in f32.

/// Normalise each run of `width` values of `x` into `out`, times `w` (length `width`) if given.
pub fn rms_norm(x: &[f32], w: Option<&[f32]>, width: usize, eps: f32, out: &mut [f32]) {
    debug_assert_eq!(x.len(), out.len());
    for (xr, or) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let sum: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
        let mean = (sum / width as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        match w {
            Some(w) => {
                for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
                    *o = (v * scale) * g;
                }
            }
            None => {
                for (o, &v) in or.iter_mut().zip(xr) {
                    *o = v * scale;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_rms_after_norm() {
        let x: Vec<f32> = (0..16).map(|i| (i as f32 - 7.3) * 0.37).collect();
        let mut out = vec![0.0; 16];
        rms_norm(&x, None, 8, 0.0, &mut out);
        for r in out.chunks(8) {
            let ms: f32 = r.iter().map(|v| v * v).sum::<f32>() / 8.0;
            assert!((ms - 1.0).abs() < 1e-5);
        }
        let w = vec![2.0; 8];
        let mut out2 = vec![0.0; 16];
        rms_norm(&x, Some(&w), 8, 0.0, &mut out2);
        assert!(out
            .iter()
            .zip(&out2)
            .all(|(a, b)| (2.0 * a - b).abs() < 1e-6));
    }
}
