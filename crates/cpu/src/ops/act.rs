//! Gated FFN activations, as llama.cpp's CPU backend computes them. GELU rounds the input to f16
//! and looks the result up in a 64K-entry f16 table (outside ±10 it is 0 or x), the table built
//! from `ggml_gelu_f32` as llama.cpp's build compiles it (one FMA). SiLU is
//! `x / (1 + e)` with `e` from `ggml_v_expf`, the AVX-512 exp approximation llama.cpp's
//! `ggml_vec_swiglu_f32` uses for whole 16-lane vectors (within 2 ulp of `exp`; llama.cpp's
//! scalar tail of a row that is not a multiple of 16 uses libm's `expf` instead).

use std::sync::OnceLock;

use half::f16;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_COEF_A: f32 = 0.044715;

/// The GELU tanh formula in f32 (`Precision::Exact`).
pub fn gelu_tanh_exact(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// `ggml_gelu_f32` (ggml-cpu/vec.h) as llama.cpp's build compiles it: GCC contracts
/// `1.0f + GELU_COEF_A*x*x` to `fma(GELU_COEF_A*x, x, 1)`. With the two operations instead,
/// one table entry differs (`x = -1.999`, f16 0xbfff); with the FMA all 65536 entries equal
/// the table in libggml-cpu (`tanhf` is the same glibc function on both sides).
fn ggml_gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (GELU_COEF_A * x).mul_add(x, 1.0)).tanh())
}

fn gelu_table() -> &'static [u16] {
    static T: OnceLock<Vec<u16>> = OnceLock::new();
    T.get_or_init(|| {
        (0..=u16::MAX)
            .map(|h| f16::from_f32(ggml_gelu_f32(f16::from_bits(h).to_f32())).to_bits())
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

/// GEGLU as llama.cpp's `ggml_vec_geglu_f32` computes `gelu(x) · u`: +0 for `x <= -10`
/// whatever the sign of `u` (not `0 · u`), `x · u` for `x >= 10`, else the table value times `u`.
#[inline(always)]
pub fn geglu(x: f32, u: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else {
        gelu(x) * u
    }
}

/// `ggml_v_expf` of ggml-cpu/vec.h (AVX-512 F + DQ build), one lane: `2^n · p(b)` with
/// `n = round(x·log2 e)`, `b = x − n·ln 2` in two FMA steps and a degree-5 polynomial;
/// `|n| > 192` gives `+inf` or 0.
#[inline(always)]
pub fn ggml_v_expf(x: f32) -> f32 {
    let c = f32::from_bits;
    let r = c(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(c(0x3fb8_aa3b), r);
    let n = z - r;
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    let u = b * b;
    let j = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)))
        .mul_add(u, c(0x3f7f_fff6).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // vscalefps: j·2^n rounded once (exact in f64, then one rounding to f32). |n| ≤ 192, so
    // 2^n is a normal f64, built from its exponent bits.
    let two_n = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    (j as f64 * two_n) as f32
}

/// SiLU as llama.cpp's AVX-512 `ggml_v_silu`: `x / (1 + ggml_v_expf(0 − x))`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + ggml_v_expf(0.0 - x))
}

/// gate = act(gate) * up
pub fn gated<F: Fn(f32) -> f32>(gate: &mut [f32], up: &[f32], act: F) {
    gated_with(gate, up, |g, u| act(g) * u)
}

/// gate = f(gate, up)
pub fn gated_with<F: Fn(f32, f32) -> f32>(gate: &mut [f32], up: &[f32], f: F) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("fma") {
        // SAFETY: FMA was detected at run time.
        return unsafe { gated_fma(gate, up, f) };
    }
    gated_body(gate, up, f)
}

/// With FMA enabled the activations' `mul_add`s become instructions instead of `fmaf` calls
/// (the same correctly rounded results).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn gated_fma<F: Fn(f32, f32) -> f32>(gate: &mut [f32], up: &[f32], f: F) {
    gated_body(gate, up, f)
}

#[inline(always)]
fn gated_body<F: Fn(f32, f32) -> f32>(gate: &mut [f32], up: &[f32], f: F) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = f(*g, u);
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
        // The entry where the FMA matters: llama.cpp's table holds 0xa9d3 there.
        assert_eq!(gelu(-1.999), f16::from_bits(0xa9d3).to_f32());
        assert_eq!(gelu(-11.0), 0.0);
        assert_eq!(gelu(12.5), 12.5);
        assert_eq!(geglu(-11.0, -2.0).to_bits(), 0); // +0, as llama.cpp stores it
        assert_eq!(geglu(12.5, 2.0), 25.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
    }

    #[test]
    fn v_expf_is_within_two_ulp_of_exp() {
        for i in -100_000..100_000 {
            let x = i as f32 * 8.7e-4;
            let (got, want) = (ggml_v_expf(x), (x as f64).exp());
            let ulp = (want as f32).abs() * f32::EPSILON;
            assert!(
                (got as f64 - want).abs() <= 2.0 * ulp as f64,
                "x={x}: {got} vs {want}"
            );
        }
        assert_eq!(ggml_v_expf(-200.0), 0.0);
        assert_eq!(ggml_v_expf(200.0), f32::INFINITY);
    }
}
