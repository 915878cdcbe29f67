//! Gated FFN activations. GELU follows llama.cpp's CPU backend, which rounds the input to f16 and
//! looks the result up in a 64K-entry f16 table (outside ±10 it is 0 or x); SiLU is exact f32.

use std::sync::OnceLock;

use half::f16;

pub fn gelu_tanh_exact(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)).tanh())
}

fn gelu_table() -> &'static [u16] {
    static T: OnceLock<Vec<u16>> = OnceLock::new();
    T.get_or_init(|| {
        (0..=u16::MAX)
            .map(|h| f16::from_f32(gelu_tanh_exact(f16::from_bits(h).to_f32())).to_bits())
            .collect()
    })
}

/// GELU (tanh form) as llama.cpp's CPU backend computes it.
pub fn gelu(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        f16::from_bits(gelu_table()[f16::from_f32(x).to_bits() as usize]).to_f32()
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// gate = act(gate) * up
pub fn gated(gate: &mut [f32], up: &[f32], act: fn(f32) -> f32) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = act(*g) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_table_tracks_the_formula() {
        for i in -2000..2000 {
            let x = i as f32 * 0.006;
            let d = (gelu(x) - gelu_tanh_exact(x)).abs();
            assert!(d <= 2e-3 * (1.0 + x.abs()), "x={x}: {d}");
        }
        assert_eq!(gelu(-11.0), 0.0);
        assert_eq!(gelu(12.5), 12.5);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
    }
}
