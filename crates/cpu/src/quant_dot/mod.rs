//! Quantized dot products: one weight row against one (or a few) quantized activation rows,
//! reproducing llama.cpp's x86 CPU backend bit for bit (ggml 0.25.3 built with `-march=native`
//! on an AVX-512 VNNI CPU, the build that produced the reference outputs).
//!
//! llama.cpp picks a kernel per weight type and batch size, and each kernel sums in its own
//! order. [`Route`] names the one a matmul reproduces (see [`route`]):
//! - [`Route::VecDot`]: `ggml_vec_dot_<type>_q8_<x>` (ggml-cpu/arch/x86/quants.c). Eight i32
//!   lanes per block, lane `k` holding the products of the 4 consecutive bytes `4k..4k+3` of
//!   each 32-element chunk; per block one `fma(d_w·d_a, lane, acc)` on 8 f32 lanes; one
//!   horizontal sum at the end (`((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7))`). Each type's extras
//!   (mins, offsets) are folded in exactly where llama.cpp folds them (`scalar.rs` spells each
//!   one out). For Q4_0/Q5_0/Q8_0 with 2 or more tokens llama.cpp runs tinyBLAS_Q0_AVX
//!   (llamafile/sgemm.cpp) instead, which sums in the same order, so this route covers it.
//! - [`Route::Tiled`]: K-quants with 8 or more tokens (ggml-cpu/tiled, the AVX-512 VNNI
//!   microkernel): the whole super-block's integer sum `I` (and mins sum `M`), then
//!   `r = I·d_w` (`r = I·d_w − dmin·M` as one fnmadd), `acc = fma(r, d_a, acc)`.
//! - [`Route::Repacked`]: weights llama.cpp repacks at load when their row count is a multiple
//!   of 8 (Q4_0 → q4_0_8x8, Q4_K → q4_K_8x8; ggml-cpu/repack.cpp, arch/x86/repack.cpp). The
//!   first `n − n%4` tokens (when `n > 3`) go through the GEMM, with activations from the
//!   interleaved 4-row quantizer, the rest through the GEMV: per block (Q4_K GEMM: per 64
//!   elements) `acc = fma(I, d_w·d_a, acc)`, `accm = fma(M, dmin·d_a, accm)`, out `acc − accm`.
//!
//! Files:
//! - [`scalar`] defines the math: per-route dot products on the standard block layouts, plain
//!   Rust with `mul_add` wherever llama.cpp's build fuses (slow, but the definition).
//! - [`acts`] quantizes activations once per matmul call, with llama.cpp's x86 rules.
//! - `x86` holds the AVX2 (`vpmaddubsw`) and AVX-512 VNNI (`vpdpbusd` / `vpdpwssd`) kernels;
//!   they equal the scalar functions bit for bit (integer parts are exact, and every float
//!   operation happens in the same order; tests/matmul.rs checks every output bit).
//!
//! The SIMD level is chosen once at run time; `KESTREL_CPU_SIMD=scalar|avx2|avx512` forces one.
//!
//! Not reproduced: Q2_K weights with a row count that is a multiple of 8 (llama.cpp repacks them
//! to q2_K_8x8 on AVX-512 CPUs; here they take the tiled / vec_dot routes), and the float types
//! (llama.cpp rounds activations to f16 / bf16 for F16 / BF16 weights and sums F32 in tinyBLAS
//! order; here products and sums are f32 on the unrounded activations).

pub mod acts;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use kestrel_gguf::GgmlType;

pub use acts::{ActFormat, Acts, Codes, Layout, Q8kSign};

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

/// Computes `nt` (1..=the kernel's tile) dots of one weight row against activation rows
/// `t0..t0+nt`, writing `out[i * out_stride]` for token `t0 + i`. `t0` is a multiple of the
/// kernel's tile (so a tile never straddles `acts.n_x4`, a multiple of 4, when the tile is 4).
///
/// # Safety
/// `out` must be valid for those writes; `w` must hold exactly one row of the weight type
/// that `acts` was quantized for; the CPU must support the kernel's level.
pub type RowKernel =
    unsafe fn(w: &[u8], acts: &Acts, t0: usize, nt: usize, out: *mut f32, out_stride: usize);

/// Most activation rows one kernel call reuses a weight block for.
pub const TILE: usize = 8;

/// A row kernel, the level it runs at and its tile (activation rows per call, ≤ [`TILE`]: 8 for
/// the legacy types, whose per-token work is small, 4 for the K-quants and float types).
#[derive(Clone, Copy)]
pub struct Kernel {
    pub run: RowKernel,
    pub level: SimdLevel,
    pub tile: usize,
}

/// Which llama.cpp kernel a matmul reproduces (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    VecDot,
    Tiled,
    Repacked,
}

/// The route llama.cpp takes for weight type `ty` with `rows` output rows and `n_tokens`
/// activation rows (float types: always [`Route::VecDot`]).
pub fn route(ty: GgmlType, rows: usize, n_tokens: usize) -> Route {
    use GgmlType::*;
    match ty {
        Q4_0 | Q4_K if rows.is_multiple_of(8) => Route::Repacked,
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K if n_tokens >= 8 => Route::Tiled,
        _ => Route::VecDot,
    }
}

/// Tokens `0..gemm_tokens` of a [`Route::Repacked`] matmul go through the GEMM (and have their
/// activations quantized by the interleaved 4-row quantizer); 0 for the other routes.
pub fn gemm_tokens(route: Route, n_tokens: usize) -> usize {
    if route == Route::Repacked && n_tokens > 3 {
        n_tokens - n_tokens % 4
    } else {
        0
    }
}

/// Whether token `index` of a `len`-token matmul takes the same route in every such call
/// whatever the weight type: the repacked GEMM (not its GEMV remainder), the tiled K-quant
/// kernel, or vec_dot for the types that always take it. Tokens for which this holds get the
/// same bits in any chunk (prefix reuse shares their K/V).
pub fn bulk_of_chunk(len: usize, index: usize) -> bool {
    len >= 8 && index < len - len % 4
}

/// The form in which the SIMD kernels for weight type `ty` at `level` read the activation codes
/// of an `n_tokens` matmul ([`Acts::build`]). Every form gives the exact integer lanes `Σ q·w`
/// of the signed legacy values (Q4_0 `c − 8`, Q5_0 `c − 16`, Q8_0):
/// - few tokens (decode): [`Codes::LaneOffset`], the unsigned codes `c = w + off` (Q8_0:
///   `w + 128`) into `vpdpbusd` / `vpmaddubsw` with each lane starting from the activations'
///   `−off·Σq`: no per-block work beyond the decode;
/// - more tokens: [`Codes::Biased`], `Σ (q + 128)·w − 128·Σ w` with the correction computed once
///   per block and shared by the tile, and no extra activation loads;
/// - Q8_0 on AVX2: plain codes and `|w| × sign(q, w)` (its full-range weights would saturate
///   `vpmaddubsw`'s i16 pairs against 8-bit unsigned codes).
pub fn codes_for(ty: GgmlType, level: SimdLevel, n_tokens: usize) -> Codes {
    let few = n_tokens <= 3;
    match ty {
        GgmlType::Q4_0 if few => Codes::LaneOffset(8),
        GgmlType::Q5_0 if few => Codes::LaneOffset(16),
        GgmlType::Q4_0 | GgmlType::Q5_0 => Codes::Biased,
        GgmlType::Q8_0 if level >= SimdLevel::Avx512 && few => Codes::LaneOffset(128),
        GgmlType::Q8_0 if level >= SimdLevel::Avx512 => Codes::Biased,
        _ => Codes::Plain,
    }
}

/// The row kernel for weight type `ty` on `route` at `level` (a type without a kernel at that
/// level falls back to the next lower one). `None` if `ty` has no matmul support at all.
pub fn row_kernel(ty: GgmlType, route: Route, level: SimdLevel) -> Option<Kernel> {
    ActFormat::for_weight(ty)?;
    let level = level.min(detected());
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx2 {
        if let Some((run, tile)) = x86::row_kernel(ty, route, level) {
            return Some(Kernel { run, level, tile });
        }
    }
    Some(Kernel {
        run: scalar::row_kernel(ty, route)?,
        level: SimdLevel::Scalar,
        tile: 4,
    })
}
