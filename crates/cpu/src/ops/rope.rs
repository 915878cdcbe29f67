//! Rotary position embedding. Angles follow ggml: theta_i = pos * base^(-2i/n_rot), built by
//! repeated f32 multiplication, divided by the optional freq factor, times `freq_scale`. The
//! rotation fuses like llama.cpp's build of `rotate_pairs` (GCC contracts it to FMAs): NeoX
//! `x0·cos − x1·sin` as `fma(x0, cos, −(x1·sin))` and `x0·sin + x1·cos` as
//! `fma(x0, sin, x1·cos)`; adjacent pairs (vectorized there with `vfmaddsub`) as
//! `fma(x0, cos, −(x1·sin))` and `fma(x1, cos, x0·sin)`.

/// How one layer rotates its heads.
#[derive(Clone, Copy, Debug)]
pub struct Rope<'a> {
    pub head_dim: usize,
    /// Rotated dimensions per head; the rest pass through.
    pub n_rot: usize,
    pub base: f32,
    /// Multiplies positions (1 / linear scaling factor).
    pub freq_scale: f32,
    /// NeoX pairs (i, i + n_rot/2); otherwise adjacent pairs (2i, 2i+1).
    pub neox: bool,
    /// Per-pair divisors of the angle.
    pub factors: Option<&'a [f32]>,
}

/// Rotate every head (runs of `head_dim`) of one token's row at position `pos`.
pub fn rope_row(row: &mut [f32], r: &Rope, pos: u32) {
    let Rope {
        head_dim,
        n_rot,
        base,
        freq_scale,
        neox,
        factors,
    } = *r;
    let half = n_rot / 2;
    let mut cos = vec![0f32; half];
    let mut sin = vec![0f32; half];
    let theta_scale = base.powf(-2.0 / n_rot as f32);
    let mut theta = pos as f32;
    for i in 0..half {
        let ff = factors.map_or(1.0, |f| f[i]);
        let t = freq_scale * (theta / ff);
        cos[i] = t.cos();
        sin[i] = t.sin();
        theta *= theta_scale;
    }
    for head in row.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let (a, b) = if neox {
                (i, i + half)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0.mul_add(cos[i], -(x1 * sin[i]));
            head[b] = if neox {
                x0.mul_add(sin[i], x1 * cos[i])
            } else {
                x1.mul_add(cos[i], x0 * sin[i])
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_norm_is_kept() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 * 0.1 - 1.0).collect();
        let mut y = x.clone();
        let r = |n_rot, neox| Rope {
            head_dim: 16,
            n_rot,
            base: 10000.0,
            freq_scale: 1.0,
            neox,
            factors: None,
        };
        rope_row(&mut y, &r(16, true), 0);
        assert_eq!(x, y);
        for neox in [true, false] {
            let mut y = x.clone();
            rope_row(&mut y, &r(12, neox), 37);
            let n0: f32 = x.iter().map(|v| v * v).sum();
            let n1: f32 = y.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-4);
            // dims at or above n_rot pass through
            assert_eq!(&x[12..16], &y[12..16]);
        }
    }
}
