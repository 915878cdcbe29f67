//! Activation rows quantized once per matmul call (specs/quants.md §5), in the layout the chosen
//! kernels read:
//! - scalar path: the standard block format (Q8_0 / Q8_1 / Q8_K bytes from the gguf reference
//!   quantizers), one packed row per token;
//! - SIMD paths: the same codes and scales split into planes: `qs` (int8 codes, one contiguous
//!   64-byte-aligned row per token), `d` (f32 scale per block), `s` (per block f32 `d·Σq`:
//!   the Q8_1 `s` field, or for Q8_0 computed from the codes), `bsums` (Q8_K per-16 sums).
//!
//! Float weight types (F32, F16, BF16) take the f32 activations as they are.

use kestrel_gguf::quant::{f16_to_f32, quantize_q8_0, quantize_q8_1, quantize_q8_k};
use kestrel_gguf::GgmlType;
use rayon::prelude::*;

/// Activation format a weight type's dot product pairs with (specs/quants.md §1).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActFormat {
    F32,
    Q8_0,
    Q8_1,
    Q8_K,
}

impl ActFormat {
    /// The CPU pairing: Q4_0/Q5_0/Q8_0 × Q8_0; Q4_1/Q5_1 × Q8_1; K-quants × Q8_K;
    /// F32/F16/BF16 × f32. `None` for types the matmul does not support.
    pub fn for_weight(ty: GgmlType) -> Option<ActFormat> {
        use GgmlType::*;
        Some(match ty {
            F32 | F16 | BF16 => ActFormat::F32,
            Q4_0 | Q5_0 | Q8_0 => ActFormat::Q8_0,
            Q4_1 | Q5_1 => ActFormat::Q8_1,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K => ActFormat::Q8_K,
            _ => return None,
        })
    }

    /// Elements per block (1 for f32).
    pub fn block(self) -> usize {
        match self {
            ActFormat::F32 => 1,
            ActFormat::Q8_0 | ActFormat::Q8_1 => 32,
            ActFormat::Q8_K => 256,
        }
    }

    /// Bytes per block of the standard layout.
    pub fn block_bytes(self) -> usize {
        match self {
            ActFormat::F32 => 4,
            ActFormat::Q8_0 => 34,
            ActFormat::Q8_1 => 36,
            ActFormat::Q8_K => 292,
        }
    }
}

/// 64-byte aligned int8 storage.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i8; 64]);

/// Quantized activations for `n_tokens` rows of `cols` values.
pub struct Acts<'a> {
    pub fmt: ActFormat,
    pub n_tokens: usize,
    pub cols: usize,
    /// Blocks per row.
    pub nb: usize,
    /// The f32 input rows (`n_tokens × cols`).
    pub x: &'a [f32],
    /// Standard blocks, `row_bytes` per token (scalar path; empty otherwise).
    pub blocks: Vec<u8>,
    pub row_bytes: usize,
    qs: Vec<Line>,
    /// Bytes between tokens in `qs` (cols rounded up to 64).
    pub qs_stride: usize,
    /// Per-block f32 scales, `sd_stride` per token (nb rounded up to 8, zero padded).
    pub d: Vec<f32>,
    /// Per-block f32 `d·Σq` (Q8_0, Q8_1), same layout as `d`.
    pub s: Vec<f32>,
    pub sd_stride: usize,
    /// Q8_K per-16 code sums, `nb * 16` per token.
    pub bsums: Vec<i16>,
}

/// Position of element `i` of block `b` in a token's code plane. Q8_K: linear. Q8_0 / Q8_1:
/// blocks are paired and their 16-element halves interleaved, `[2p: 0..16][2p+1: 0..16]
/// [2p: 16..32][2p+1: 16..32]`, so that one 256-bit integer dot over each half of a pair
/// leaves the two blocks' sums in separate 128-bit lanes.
#[inline]
pub fn code_pos(fmt: ActFormat, b: usize, i: usize) -> usize {
    match fmt {
        ActFormat::Q8_K => b * 256 + i,
        _ => (b / 2) * 64 + (i / 16) * 32 + (b % 2) * 16 + i % 16,
    }
}

/// Raw plane pointers shared by the per-token quantizer tasks (each writes its own rows).
#[cfg(target_arch = "x86_64")]
struct Planes {
    qs: *mut i8,
    d: *mut f32,
    s: *mut f32,
    bsums: *mut i16,
}

// SAFETY: the tasks write disjoint per-token rows (see `Acts::simd_planes`).
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for Planes {}

/// Token count from which quantization is spread over the thread pool.
const PAR_TOKENS: usize = 4;

/// Which layout [`Acts::new`] builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Standard blocks from the gguf reference quantizers (scalar path).
    Blocks,
    /// Planes from the SIMD quantizers (needs AVX2; bit-identical to `PlanesReference`).
    Planes,
    /// Planes split from the reference blocks (for tests and CPUs without AVX2).
    PlanesReference,
}

impl<'a> Acts<'a> {
    /// Quantize `x` (`n_tokens × cols`) for `fmt` into `layout`.
    ///
    /// # Panics
    /// If `x` is short, `cols` is not a whole number of blocks, or `Planes` is asked for on a
    /// CPU without AVX2.
    pub fn new(fmt: ActFormat, x: &'a [f32], n_tokens: usize, cols: usize, layout: Layout) -> Self {
        assert!(
            x.len() >= n_tokens * cols,
            "activations: {} values < {n_tokens} × {cols}",
            x.len()
        );
        assert!(
            cols.is_multiple_of(fmt.block()),
            "activations: {cols} columns not a multiple of {}",
            fmt.block()
        );
        let x = &x[..n_tokens * cols];
        let nb = cols / fmt.block();
        let mut a = Acts {
            fmt,
            n_tokens,
            cols,
            nb,
            x,
            blocks: Vec::new(),
            row_bytes: nb * fmt.block_bytes(),
            qs: Vec::new(),
            qs_stride: cols.div_ceil(64) * 64,
            d: Vec::new(),
            s: Vec::new(),
            sd_stride: nb.div_ceil(8) * 8,
            bsums: Vec::new(),
        };
        if fmt == ActFormat::F32 {
            return a;
        }
        match layout {
            Layout::Blocks => a.blocks = a.reference_blocks(),
            Layout::PlanesReference => {
                let blocks = a.reference_blocks();
                a.split_planes(&blocks);
            }
            Layout::Planes => a.simd_planes(),
        }
        a
    }

    fn reference_blocks(&self) -> Vec<u8> {
        let (fmt, cols) = (self.fmt, self.cols);
        let mut blocks = vec![0u8; self.n_tokens * self.row_bytes];
        let quant = |(xr, br): (&[f32], &mut [u8])| match fmt {
            ActFormat::Q8_0 => quantize_q8_0(xr, br),
            ActFormat::Q8_1 => quantize_q8_1(xr, br),
            ActFormat::Q8_K => quantize_q8_k(xr, br),
            ActFormat::F32 => unreachable!(),
        };
        let rows = self.x.chunks_exact(cols);
        if self.n_tokens >= PAR_TOKENS {
            self.x
                .par_chunks_exact(cols)
                .zip(blocks.par_chunks_exact_mut(self.row_bytes))
                .for_each(quant);
        } else {
            rows.zip(blocks.chunks_exact_mut(self.row_bytes))
                .for_each(quant);
        }
        blocks
    }

    fn alloc_planes(&mut self) {
        let nt = self.n_tokens;
        self.qs = vec![Line([0; 64]); nt * self.qs_stride / 64];
        self.d = vec![0.0; nt * self.sd_stride];
        self.s = vec![0.0; nt * self.sd_stride];
        if self.fmt == ActFormat::Q8_K {
            self.bsums = vec![0; nt * self.nb * 16];
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn simd_planes(&mut self) {
        use super::x86::quantize::{q8_0_row, q8_k_row};
        assert!(
            super::detected() >= super::SimdLevel::Avx2,
            "SIMD quantizer needs AVX2"
        );
        self.alloc_planes();
        let (fmt, cols, nb) = (self.fmt, self.cols, self.nb);
        let (qs_stride, sd) = (self.qs_stride, self.sd_stride);
        let x = self.x;
        let planes = Planes {
            qs: self.qs.as_mut_ptr() as *mut i8,
            d: self.d.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            bsums: self.bsums.as_mut_ptr(),
        };
        let row = |t: usize| {
            let p = &planes;
            let xr = &x[t * cols..(t + 1) * cols];
            // SAFETY: each token writes only its own rows of the planes, which were allocated
            // above with these strides; AVX2 was checked above.
            unsafe {
                let qs = std::slice::from_raw_parts_mut(p.qs.add(t * qs_stride), qs_stride);
                let d = std::slice::from_raw_parts_mut(p.d.add(t * sd), sd);
                if fmt == ActFormat::Q8_K {
                    let bsums = std::slice::from_raw_parts_mut(p.bsums.add(t * nb * 16), nb * 16);
                    q8_k_row(xr, qs, d, bsums);
                } else {
                    let s = std::slice::from_raw_parts_mut(p.s.add(t * sd), sd);
                    q8_0_row(xr, qs, d, s, fmt == ActFormat::Q8_1);
                }
            }
        };
        if self.n_tokens >= PAR_TOKENS {
            (0..self.n_tokens).into_par_iter().for_each(row);
        } else {
            (0..self.n_tokens).for_each(row);
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn simd_planes(&mut self) {
        panic!("SIMD quantizer needs x86-64 AVX2");
    }

    /// Fill the plane layout from the standard blocks.
    fn split_planes(&mut self, blocks: &[u8]) {
        let (nt, nb, bb) = (self.n_tokens, self.nb, self.fmt.block_bytes());
        self.alloc_planes();
        let fmt = self.fmt;
        for t in 0..nt {
            let row = &blocks[t * self.row_bytes..(t + 1) * self.row_bytes];
            let qs_off = t * self.qs_stride;
            for (b, src) in row.chunks_exact(bb).enumerate() {
                let f16 = |o: usize| f16_to_f32(u16::from_le_bytes([src[o], src[o + 1]]));
                let (d, s, codes) = match self.fmt {
                    ActFormat::Q8_0 => {
                        let d = f16(0);
                        let sum: i32 = src[2..34].iter().map(|&q| q as i8 as i32).sum();
                        (d, d * sum as f32, &src[2..34])
                    }
                    ActFormat::Q8_1 => (f16(0), f16(2), &src[4..36]),
                    ActFormat::Q8_K => {
                        let d = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
                        for (k, pair) in src[260..292].chunks_exact(2).enumerate() {
                            self.bsums[(t * nb + b) * 16 + k] =
                                i16::from_le_bytes([pair[0], pair[1]]);
                        }
                        (d, 0.0, &src[4..260])
                    }
                    ActFormat::F32 => unreachable!(),
                };
                self.d[t * self.sd_stride + b] = d;
                self.s[t * self.sd_stride + b] = s;
                let qs = self.qs_mut();
                for (i, &c) in codes.iter().enumerate() {
                    qs[qs_off + code_pos(fmt, b, i)] = c as i8;
                }
            }
        }
    }

    fn qs_mut(&mut self) -> &mut [i8] {
        let n = self.qs.len() * 64;
        // SAFETY: `Line` is a plain array of 64 i8 with no padding.
        unsafe { std::slice::from_raw_parts_mut(self.qs.as_mut_ptr() as *mut i8, n) }
    }

    /// All int8 code rows (plane layout), `qs_stride` apart.
    pub fn qs(&self) -> &[i8] {
        let n = self.qs.len() * 64;
        // SAFETY: as in `qs_mut`.
        unsafe { std::slice::from_raw_parts(self.qs.as_ptr() as *const i8, n) }
    }

    /// Token `t`'s standard blocks (scalar path).
    pub fn block_row(&self, t: usize) -> &[u8] {
        &self.blocks[t * self.row_bytes..(t + 1) * self.row_bytes]
    }

    /// Token `t`'s f32 values.
    pub fn x_row(&self, t: usize) -> &[f32] {
        &self.x[t * self.cols..(t + 1) * self.cols]
    }
}
