//! Random tensor data. Quantized blocks are written directly: random codes under small f16
//! scales, so that the dequantized weights have mean ≈ 0 and standard deviation ≈ `WEIGHT_STD`.
//! Norm weights are near 1. Nothing can be NaN or infinite: every scale is a finite f16 and every
//! code is in range.
//!
//! A tensor is cut into chunks of `CHUNK_UNITS` blocks (elements for float types), each with its
//! own seed derived from the tensor's; threads take chunks in any order, so the bytes depend on
//! the seed alone, never on the thread count.

use std::sync::Mutex;

use kestrel_gguf::quant::{f16_to_f32, f32_to_f16};
use kestrel_gguf::GgmlType;

/// Standard deviation of the random weights (that of a typical trained LLM matrix).
pub const WEIGHT_STD: f32 = 0.02;

/// Relative spread of norm weights around their centre.
const NORM_NOISE: f32 = 0.02;

/// Blocks (or float elements) per independently seeded chunk.
const CHUNK_UNITS: usize = 4096;

/// What a tensor holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Random weights: mean ≈ 0, std ≈ `WEIGHT_STD`.
    Weight,
    /// `centre × (1 ± 2%)`: norm weights, layer scales.
    Norm(f32),
    /// Gemma 4 proportional-RoPE divisors: `rotated` ones, then 1e30 (specs/gemma.md §3.3).
    RopeFreqs { rotated: usize },
}

/// The types `fill` can produce.
pub fn can_fill(ty: GgmlType, init: Init) -> bool {
    use GgmlType::*;
    match init {
        Init::Weight => matches!(ty, F32 | F16 | Q4_0 | Q5_0 | Q8_0 | Q4_K | Q6_K),
        Init::Norm(_) | Init::RopeFreqs { .. } => ty == F32,
    }
}

/// Fill `out` (a whole tensor of `ty`) with random data for `init`, on up to `threads` threads.
///
/// # Panics
/// If `can_fill(ty, init)` is false or `out` is not whole blocks.
pub fn fill(ty: GgmlType, init: Init, seed: u64, out: &mut [u8], threads: usize) {
    assert!(can_fill(ty, init), "cannot fill {ty} with {init:?}");
    let unit = ty.type_size();
    assert_eq!(out.len() % unit, 0, "{ty} tensor of {} bytes", out.len());
    let chunk_bytes = unit * CHUNK_UNITS;
    let n_chunks = out.len().div_ceil(chunk_bytes);
    let threads = threads.clamp(1, n_chunks.max(1));
    let jobs = Mutex::new(out.chunks_mut(chunk_bytes).enumerate());
    let work = || loop {
        let Some((k, chunk)) = jobs.lock().expect("no panics while held").next() else {
            break;
        };
        let mut rng = Rng::new(seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        fill_chunk(ty, init, &mut rng, k * CHUNK_UNITS, chunk);
    };
    if threads == 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 1..threads {
                s.spawn(work);
            }
            work();
        });
    }
}

/// The seed of one tensor: the user's seed mixed with the tensor name (FNV-1a).
pub fn tensor_seed(seed: u64, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = seed ^ h;
    splitmix64(&mut z)
}

fn fill_chunk(ty: GgmlType, init: Init, rng: &mut Rng, first: usize, out: &mut [u8]) {
    use GgmlType::*;
    match (ty, init) {
        (F32, _) => {
            for (i, b) in out.chunks_exact_mut(4).enumerate() {
                let v = match init {
                    Init::Weight => rng.normal() * WEIGHT_STD,
                    Init::Norm(c) => c * (1.0 + NORM_NOISE * (2.0 * rng.unit() - 1.0)),
                    Init::RopeFreqs { rotated } => {
                        if first + i < rotated {
                            1.0
                        } else {
                            1e30
                        }
                    }
                };
                b.copy_from_slice(&v.to_le_bytes());
            }
        }
        (F16, _) => {
            for b in out.chunks_exact_mut(2) {
                b.copy_from_slice(&f32_to_f16(rng.normal() * WEIGHT_STD).to_le_bytes());
            }
        }
        // Legacy blocks: f16 scale, then packed codes; value = d · (code − offset).
        (Q4_0, _) => legacy_blocks(rng, out, 18, uniform_rms(-8, 7)),
        (Q5_0, _) => legacy_blocks(rng, out, 22, uniform_rms(-16, 15)),
        (Q8_0, _) => legacy_blocks(rng, out, 34, uniform_rms(-128, 127)),
        (Q4_K, _) => {
            for b in out.chunks_exact_mut(144) {
                q4_k_block(rng, b);
            }
        }
        (Q6_K, _) => {
            for b in out.chunks_exact_mut(210) {
                q6_k_block(rng, b);
            }
        }
        _ => unreachable!("can_fill({ty}, {init:?}) was checked"),
    }
}

/// Root mean square of an integer uniform on `lo..=hi`.
fn uniform_rms(lo: i32, hi: i32) -> f32 {
    let n = (hi - lo + 1) as f64;
    let sum: f64 = (lo..=hi).map(|x| (x as f64).powi(2)).sum();
    (sum / n).sqrt() as f32
}

/// Scale × uniform(0.9, 1.1): blocks differ a little, as real ones do.
fn jitter(rng: &mut Rng, scale: f32) -> f32 {
    scale * (0.9 + 0.2 * rng.unit())
}

/// Q4_0 / Q5_0 / Q8_0: a signed f16 scale, then random bytes (every byte pattern is a valid
/// code). The random sign cancels the codes' half-step offset (their mean is −0.5).
fn legacy_blocks(rng: &mut Rng, out: &mut [u8], size: usize, code_rms: f32) {
    for b in out.chunks_exact_mut(size) {
        let sign = if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
        let d = sign * jitter(rng, WEIGHT_STD / code_rms);
        b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        rng.fill_bytes(&mut b[2..]);
    }
}

/// Q4_K sub-block scales: value = d·sc·q − dmin·m with q uniform on 0..=15. With dmin = 2d and
/// m = 15·sc/4 that is d·sc·(q − 7.5): zero mean. sc ∈ {8, 12, 16} (m ∈ {30, 45, 60}, 6 bits).
const Q4K_SCALES: [u8; 3] = [8, 12, 16];

fn q4_k_block(rng: &mut Rng, b: &mut [u8]) {
    let sc_rms = (Q4K_SCALES.iter().map(|&s| (s as f32).powi(2)).sum::<f32>() / 3.0).sqrt();
    // rms of q − 7.5 for q uniform on 0..=15 is sqrt(255/12).
    let code_rms = (255f32 / 12.0).sqrt();
    let d = f32_to_f16(jitter(rng, WEIGHT_STD / (sc_rms * code_rms)));
    let dmin = f32_to_f16(2.0 * f16_to_f32(d)); // exact: doubling an f16
    b[0..2].copy_from_slice(&d.to_le_bytes());
    b[2..4].copy_from_slice(&dmin.to_le_bytes());
    let r = rng.next_u64();
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        sc[j] = Q4K_SCALES[((r >> (8 * j)) & 0xFF) as usize % 3];
        m[j] = sc[j] * 15 / 4;
    }
    pack_k4_scales(&sc, &m, &mut b[4..16]);
    rng.fill_bytes(&mut b[16..144]);
}

/// Inverse of `kestrel_gguf::quant::k4_scale_min`: eight 6-bit (scale, min) pairs into 12 bytes.
pub fn pack_k4_scales(sc: &[u8; 8], m: &[u8; 8], out: &mut [u8]) {
    for j in 0..4 {
        out[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
}

/// Q6_K: value = d·sc·(q − 32), q uniform on 0..=63, sc = ±(8..=16) (random sign per 16 values).
fn q6_k_block(rng: &mut Rng, b: &mut [u8]) {
    let sc_rms = ((8..=16).map(|s: i32| (s * s) as f32).sum::<f32>() / 9.0).sqrt();
    rng.fill_bytes(&mut b[0..192]); // ql, qh
    let (r, signs) = ([rng.next_u64(), rng.next_u64()], rng.next_u64());
    for j in 0..16 {
        let byte = (r[j / 8] >> (8 * (j % 8))) & 0xFF;
        let mag = 8 + (byte % 9) as i8;
        let s = if (signs >> j) & 1 == 1 { -mag } else { mag };
        b[192 + j] = s as u8;
    }
    let d = jitter(rng, WEIGHT_STD / (sc_rms * uniform_rms(-32, 31)));
    b[208..210].copy_from_slice(&f32_to_f16(d).to_le_bytes());
}

fn splitmix64(z: &mut u64) -> u64 {
    *z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut x = *z;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// xoshiro256++: fast, and good enough for weights nobody trains.
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        Rng {
            s: [
                splitmix64(&mut z),
                splitmix64(&mut z),
                splitmix64(&mut z),
                splitmix64(&mut z),
            ],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    pub fn fill_bytes(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = self.next_u64().to_le_bytes();
            rest.copy_from_slice(&v[..rest.len()]);
        }
    }

    /// Uniform on [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Approximately standard normal (Irwin–Hall of four uniforms, scaled to unit variance;
    /// bounded by ±2√3, so never far out).
    pub fn normal(&mut self) -> f32 {
        let r = self.next_u64();
        let s: f32 = (0..4)
            .map(|k| ((r >> (16 * k)) & 0xFFFF) as f32 / 65536.0)
            .sum();
        (s - 2.0) * 3f32.sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_gguf::quant::{dequantize, k4_scale_min};

    fn stats(v: &[f32]) -> (f32, f32) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean as f32, var.sqrt() as f32)
    }

    fn make(ty: GgmlType, init: Init, n: usize, threads: usize) -> Vec<u8> {
        let bytes = ty.row_bytes(n as u64).unwrap() as usize;
        let mut buf = vec![0u8; bytes];
        fill(ty, init, 42, &mut buf, threads);
        buf
    }

    #[test]
    fn random_weights_dequantize_to_small_finite_zero_mean_values() {
        use GgmlType::*;
        for ty in [F32, F16, Q4_0, Q5_0, Q8_0, Q4_K, Q6_K] {
            let n = 1 << 18;
            let buf = make(ty, Init::Weight, n, 2);
            let mut w = vec![0f32; n];
            dequantize(ty, &buf, &mut w).unwrap();
            assert!(w.iter().all(|x| x.is_finite()), "{ty}");
            let (mean, std) = stats(&w);
            assert!(mean.abs() < 0.001, "{ty}: mean {mean}");
            assert!((std - WEIGHT_STD).abs() < 0.002, "{ty}: std {std}");
            assert!(w.iter().all(|x| x.abs() < 0.5), "{ty}: outlier");
        }
    }

    #[test]
    fn norms_and_rope_freqs() {
        let n = 3000;
        let buf = make(GgmlType::F32, Init::Norm(1.0), n, 1);
        let mut w = vec![0f32; n];
        dequantize(GgmlType::F32, &buf, &mut w).unwrap();
        assert!(w.iter().all(|&x| (0.98..=1.02).contains(&x)));
        assert!(w.iter().any(|&x| x != 1.0));
        let buf = make(GgmlType::F32, Init::RopeFreqs { rotated: 64 }, 256, 1);
        let mut w = vec![0f32; 256];
        dequantize(GgmlType::F32, &buf, &mut w).unwrap();
        assert!(w[..64].iter().all(|&x| x == 1.0));
        assert!(w[64..].iter().all(|&x| x == 1e30));
    }

    #[test]
    fn bytes_depend_on_the_seed_not_the_thread_count() {
        let n = 32 * (3 * CHUNK_UNITS + 5);
        let a = make(GgmlType::Q8_0, Init::Weight, n, 1);
        let b = make(GgmlType::Q8_0, Init::Weight, n, 3);
        assert!(a == b);
        let mut c = vec![0u8; a.len()];
        fill(GgmlType::Q8_0, Init::Weight, 43, &mut c, 3);
        assert!(a != c);
        assert_ne!(tensor_seed(1, "a.weight"), tensor_seed(1, "b.weight"));
        assert_ne!(tensor_seed(1, "a.weight"), tensor_seed(2, "a.weight"));
    }

    #[test]
    fn k4_scales_pack_round_trips() {
        let sc = [1, 17, 33, 63, 0, 31, 48, 62];
        let m = [63, 2, 40, 7, 59, 16, 32, 1];
        let mut b = [0u8; 12];
        pack_k4_scales(&sc, &m, &mut b);
        for j in 0..8 {
            assert_eq!(k4_scale_min(&b, j), (sc[j], m[j]), "j = {j}");
        }
    }
}
