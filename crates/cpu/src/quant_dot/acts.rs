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

/// Token count from which quantization is spread over the thread pool.
const PAR_TOKENS: usize = 4;

impl<'a> Acts<'a> {
    /// Quantize `x` (`n_tokens × cols`) for `fmt`. `planes` picks the SIMD layout, otherwise
    /// the standard blocks are built.
    pub fn new(fmt: ActFormat, x: &'a [f32], n_tokens: usize, cols: usize, planes: bool) -> Self {
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
        a.blocks = vec![0u8; n_tokens * a.row_bytes];
        let quant = |(xr, br): (&[f32], &mut [u8])| match fmt {
            ActFormat::Q8_0 => quantize_q8_0(xr, br),
            ActFormat::Q8_1 => quantize_q8_1(xr, br),
            ActFormat::Q8_K => quantize_q8_k(xr, br),
            ActFormat::F32 => unreachable!(),
        };
        if n_tokens >= PAR_TOKENS {
            x.par_chunks_exact(cols)
                .zip(a.blocks.par_chunks_exact_mut(a.row_bytes))
                .for_each(quant);
        } else {
            x.chunks_exact(cols)
                .zip(a.blocks.chunks_exact_mut(a.row_bytes))
                .for_each(quant);
        }
        if planes {
            let blocks = std::mem::take(&mut a.blocks);
            a.split_planes(&blocks);
        }
        a
    }

    /// Fill the plane layout from the standard blocks.
    fn split_planes(&mut self, blocks: &[u8]) {
        let (nt, nb, bb) = (self.n_tokens, self.nb, self.fmt.block_bytes());
        self.qs = vec![Line([0; 64]); nt * self.qs_stride / 64];
        self.d = vec![0.0; nt * self.sd_stride];
        self.s = vec![0.0; nt * self.sd_stride];
        if self.fmt == ActFormat::Q8_K {
            self.bsums = vec![0; nt * nb * 16];
        }
        let blk = self.fmt.block();
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
                let dst = &mut self.qs_mut()[qs_off + b * blk..qs_off + (b + 1) * blk];
                for (q, &c) in dst.iter_mut().zip(codes) {
                    *q = c as i8;
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
