//! Quantized dot products: one weight row against one (or a few) quantized activation rows.
//!
//! - [`scalar`] defines the math: per-type `vec_dot_<type>` functions on the standard block
//!   layouts, written from specs/quants.md §6 (integer sums per block, scales applied in f32).
//! - [`acts`] quantizes activations once per matmul call, to the weight type's activation format.
//! - `x86` holds the AVX2 (`vpmaddubsw`) and AVX-512 VNNI (`vpdpbusd` / `vpdpwssd`) kernels; they
//!   must equal the scalar functions up to f32 summation order (integer parts are exact).
//!
//! The SIMD level is chosen once at run time; `KESTREL_CPU_SIMD=scalar|avx2|avx512` forces one.

pub mod acts;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use kestrel_gguf::GgmlType;

pub use acts::{ActFormat, Acts, Layout};

/// Which kernel family runs. Ordered: a level implies every lower one is usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// The scalar reference path (`scalar::vec_dot_*`).
    Scalar,
    /// AVX2 + FMA + F16C: `vpmaddubsw` / `vpmaddwd` integer dots.
    Avx2,
    /// AVX-512 F/BW/VL + VNNI on 256-bit vectors: `vpdpbusd` / `vpdpwssd`, `vpmovm2b`.
    Avx512,
}

impl SimdLevel {
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    pub fn from_name(s: &str) -> Option<SimdLevel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "none" | "off" => Some(SimdLevel::Scalar),
            "avx2" => Some(SimdLevel::Avx2),
            "avx512" | "avx-512" | "vnni" => Some(SimdLevel::Avx512),
            _ => None,
        }
    }
}

/// The best level this CPU supports (ignores the environment).
pub fn detected() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> SimdLevel {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let avx512 = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni");
    if avx512 {
        SimdLevel::Avx512
    } else if avx2 {
        SimdLevel::Avx2
    } else {
        SimdLevel::Scalar
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> SimdLevel {
    SimdLevel::Scalar
}

/// The level `matmul` uses: `KESTREL_CPU_SIMD` if set (capped at what the CPU has), else the
/// detected one. Read once per process.
pub fn selected() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let best = detected();
        match std::env::var("KESTREL_CPU_SIMD") {
            Ok(v) => match SimdLevel::from_name(&v) {
                Some(want) if want <= best => want,
                Some(want) => {
                    eprintln!(
                        "kestrel-cpu: KESTREL_CPU_SIMD={} is not supported by this CPU, using {}",
                        want.name(),
                        best.name()
                    );
                    best
                }
                None => {
                    eprintln!(
                        "kestrel-cpu: KESTREL_CPU_SIMD={v:?} is not one of scalar|avx2|avx512, using {}",
                        best.name()
                    );
                    best
                }
            },
            Err(_) => best,
        }
    })
}

/// Computes `nt` (1..=[`TILE`]) dots of one weight row against activation rows `t0..t0+nt`,
/// writing `out[i * out_stride]` for token `t0 + i`.
///
/// # Safety
/// `out` must be valid for those writes; `w` must hold exactly one row of the weight type
/// that `acts` was quantized for; the CPU must support the kernel's level.
pub type RowKernel =
    unsafe fn(w: &[u8], acts: &Acts, t0: usize, nt: usize, out: *mut f32, out_stride: usize);

/// Most activation rows one kernel call reuses a weight block for.
pub const TILE: usize = 4;

/// The row kernel for weight type `ty` at `level`, and the level it really runs at (a type
/// without a kernel at that level falls back to the next lower one). `None` if `ty` has no
/// matmul support at all.
pub fn row_kernel(ty: GgmlType, level: SimdLevel) -> Option<(RowKernel, SimdLevel)> {
    ActFormat::for_weight(ty)?;
    let level = level.min(detected());
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx2 {
        if let Some(k) = x86::row_kernel(ty, level) {
            return Some((k, level));
        }
    }
    Some((scalar::row_kernel(ty)?, SimdLevel::Scalar))
}
