//! Activation rows quantized once per matmul call, with the rules llama.cpp's x86 CPU backend
//! uses (so that every code and scale equals llama.cpp's; see `quant_dot` for which kernel runs):
//! - Q8_0 / Q8_1 (`quantize_row_q8_0` / `_q8_1` of ggml-cpu/arch/x86/quants.c): `amax` of the
//!   block, `d = amax/127` (stored as f16, round to nearest even), codes `x · (127/amax)` rounded
//!   to nearest even (not `roundf`, and not `x · (1/d)` as the gguf reference does); Q8_1 also
//!   `s = f16(d · Σq)` with the unrounded `d`.
//! - Q8_K (`quantize_row_q8_K_ref`): the first element of largest magnitude maps to −127,
//!   `iscale = −127/max`, codes `iscale · x` rounded to nearest even, `d = 1/iscale` (f32),
//!   per-16 sums. The 4-row interleaved quantizer in front of the repacked Q4_K / Q2_K GEMM
//!   (`ggml_quantize_mat_q8_K_4x8`) differs only in the sign when `+amax` and `−amax` both
//!   occur: it takes `+amax` ([`Q8kSign::PreferPositive`]).
//!
//! Layouts:
//! - scalar path: the standard block format (Q8_0 / Q8_1 / Q8_K bytes), one packed row per token;
//! - SIMD paths: the same codes and scales split into planes: `qs` (int8 codes in element order,
//!   one 64-byte-aligned row per token; [`Codes::Biased`]: stored as `q + 128` in u8), `d`
//!   (f32 scale per block), `s` (Q8_1: the f16 `s` field as f32), `bsums` (Q8_K per-16 sums),
//!   [`Codes::LaneOffset`]: `qoff`, per block 8 i32 lanes `−off·Σq` over the codes `4k..4k+3`,
//!   `d4` / `s4`: `d` and `s` transposed per group of 4 tokens (`[group][block][token % 4]`,
//!   zero padded), so that kernels working on 4 tokens per vector load them with one
//!   instruction, and for the Q8_K tokens `0..n_x4` of a repacked GEMM token-lane planes per tile
//!   of 8 tokens (zero padded): `lane_qs` (`[tile][block][4-code group][token][4 codes]`),
//!   `lane_bp` (`[tile][block][sub-block of 32][token]`, the two bsums of each sub-block added,
//!   as f32) and `lane_d` (`[tile][block][token]`).
//!
//! Float weight types (F32, F16, BF16) take the f32 activations as they are.

use kestrel_gguf::quant::{f16_to_f32, f32_to_f16};
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

/// Which sign a Q8_K block's scale takes when its largest magnitude occurs with both signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Q8kSign {
    /// `quantize_row_q8_K_ref`: the sign of the first element of largest magnitude.
    First,
    /// `ggml_quantize_mat_q8_K_4x8`: positive if `+amax` occurs anywhere in the block.
    PreferPositive,
}

/// `_mm256_cvtps_epi32` of an already rounded value: out-of-range and NaN give `i32::MIN`.
#[inline]
fn cvt_i32(r: f32) -> i32 {
    if r.is_nan() || !(-2147483648.0..2147483648.0).contains(&r) {
        i32::MIN
    } else {
        r as i32
    }
}

/// Q8_0 / Q8_1 block with llama.cpp's x86 rule: the codes written to `qs`, the unrounded f32
/// `d` and the (wrapping) i32 sum of the codes before they were saturated to int8.
fn q8_block_x86(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    // max(|x|) as `_mm256_max_ps` reduces it (NaNs propagate only from the second operand;
    // blocks with NaN have no meaningful codes either way).
    let amax = x
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m { v.abs() } else { m });
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        let c = cvt_i32((v * id).round_ties_even());
        sum = sum.wrapping_add(c);
        // packs_epi32 then packs_epi16: saturate to int8.
        *q = c.clamp(-128, 127) as i8 as u8;
    }
    (d, sum)
}

/// One row to standard Q8_0 blocks (34 bytes each) with llama.cpp's x86 rule.
///
/// # Panics
/// If `x.len()` is not a multiple of 32 or `out` is not 34 bytes per block.
pub fn quantize_row_q8_0(x: &[f32], out: &mut [u8]) {
    assert!(x.len().is_multiple_of(32) && out.len() == x.len() / 32 * 34);
    for (xb, b) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
        let (d, _) = q8_block_x86(xb, &mut b[2..34]);
        b[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    }
}

/// One row to standard Q8_1 blocks (36 bytes each) with llama.cpp's x86 rule.
///
/// # Panics
/// If `x.len()` is not a multiple of 32 or `out` is not 36 bytes per block.
pub fn quantize_row_q8_1(x: &[f32], out: &mut [u8]) {
    assert!(x.len().is_multiple_of(32) && out.len() == x.len() / 32 * 36);
    for (xb, b) in x.chunks_exact(32).zip(out.chunks_exact_mut(36)) {
        let (d, sum) = q8_block_x86(xb, &mut b[4..36]);
        b[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        b[2..4].copy_from_slice(&f32_to_f16(d * sum as f32).to_le_bytes());
    }
}

/// One row to standard Q8_K blocks (292 bytes each): `quantize_row_q8_K_ref`, or with
/// [`Q8kSign::PreferPositive`] the sign rule of `ggml_quantize_mat_q8_K_4x8`.
///
/// # Panics
/// If `x.len()` is not a multiple of 256 or `out` is not 292 bytes per block.
pub fn quantize_row_q8_k(x: &[f32], out: &mut [u8], sign: Q8kSign) {
    assert!(x.len().is_multiple_of(256) && out.len() == x.len() / 256 * 292);
    for (xb, b) in x.chunks_exact(256).zip(out.chunks_exact_mut(292)) {
        let (mut amax, mut vmax) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                vmax = v;
            }
        }
        if amax != 0.0 && sign == Q8kSign::PreferPositive && xb.contains(&amax) {
            vmax = amax;
        }
        kestrel_gguf::quant::encode_q8_k_block(xb, vmax, b);
    }
}

/// How the SIMD kernels want the activation codes (planes layouts; `quant_dot::codes_for`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codes {
    /// `q` as int8.
    Plain,
    /// `q + 128` as u8.
    Biased,
    /// `q` as int8, plus the `qoff` plane for weight codes offset by this constant (unsigned
    /// codes `c = w + off` go into the integer dot, each lane starting from `−off·Σq`).
    LaneOffset(i32),
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
    /// Tokens `0..n_x4` (a multiple of 4) were quantized with the interleaved 4-row quantizer's
    /// Q8_K sign rule and go through the repacked GEMM; the rest through the GEMV (`quant_dot`).
    pub n_x4: usize,
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
    /// Per-block Q8_1 `s` (the f16 field as f32), same layout as `d`; empty for other formats.
    pub s: Vec<f32>,
    pub sd_stride: usize,
    /// Q8_K per-16 code sums, `nb * 16` per token.
    pub bsums: Vec<i16>,
    /// `d` and `s` per tile of 4 tokens: `[tile][block][4]` (planes layouts only).
    pub d4: Vec<f32>,
    pub s4: Vec<f32>,
    /// The form of the `qs` plane (planes layouts only).
    pub codes: Codes,
    /// [`Codes::LaneOffset`]: `nb * 8` i32 per token.
    pub qoff: Vec<i32>,
    /// Token-lane planes of the tokens `0..n_x4` (Q8_K planes layouts only).
    pub lane_qs: Vec<i8>,
    pub lane_bp: Vec<f32>,
    pub lane_d: Vec<f32>,
}

/// Raw plane pointers shared by the per-token quantizer tasks (each writes its own rows).
#[cfg(target_arch = "x86_64")]
struct Planes {
    qs: *mut i8,
    d: *mut f32,
    s: *mut f32,
    bsums: *mut i16,
    qoff: *mut i32,
}

// SAFETY: the tasks write disjoint per-token rows (see `Acts::simd_planes`).
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for Planes {}

/// Token count from which quantization is spread over the thread pool.
const PAR_TOKENS: usize = 4;

/// Which layout [`Acts::new`] builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Standard blocks from the scalar quantizers (scalar path).
    Blocks,
    /// Planes from the SIMD quantizers (needs AVX2; bit-identical to `PlanesReference`).
    Planes,
    /// Planes split from the scalar quantizers' blocks (for tests and CPUs without AVX2).
    PlanesReference,
}

impl<'a> Acts<'a> {
    /// Quantize `x` (`n_tokens × cols`) for `fmt` into `layout`; every Q8_K row with the
    /// reference sign rule.
    ///
    /// # Panics
    /// If `x` is short, `cols` is not a whole number of blocks, or `Planes` is asked for on a
    /// CPU without AVX2.
    pub fn new(fmt: ActFormat, x: &'a [f32], n_tokens: usize, cols: usize, layout: Layout) -> Self {
        Self::build(fmt, x, n_tokens, cols, layout, 0, Codes::Plain)
    }

    /// [`Acts::new`], with the Q8_K rows of tokens `0..n_x4` quantized with
    /// [`Q8kSign::PreferPositive`] (`n_x4` a multiple of 4, at most `n_tokens`), and the plane
    /// codes in the form `codes` (Q8_0 / Q8_1 only).
    pub fn build(
        fmt: ActFormat,
        x: &'a [f32],
        n_tokens: usize,
        cols: usize,
        layout: Layout,
        n_x4: usize,
        codes: Codes,
    ) -> Self {
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
        assert!(n_x4.is_multiple_of(4) && n_x4 <= n_tokens);
        let x = &x[..n_tokens * cols];
        let nb = cols / fmt.block();
        let mut a = Acts {
            fmt,
            n_tokens,
            cols,
            nb,
            n_x4,
            x,
            blocks: Vec::new(),
            row_bytes: nb * fmt.block_bytes(),
            qs: Vec::new(),
            qs_stride: cols.div_ceil(64) * 64,
            d: Vec::new(),
            s: Vec::new(),
            sd_stride: nb.div_ceil(8) * 8,
            bsums: Vec::new(),
            d4: Vec::new(),
            s4: Vec::new(),
            codes: if layout == Layout::Blocks || fmt == ActFormat::Q8_K {
                Codes::Plain
            } else {
                codes
            },
            qoff: Vec::new(),
            lane_qs: Vec::new(),
            lane_bp: Vec::new(),
            lane_d: Vec::new(),
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
        if layout != Layout::Blocks {
            a.d4 = a.tiles4(&a.d);
            if a.fmt == ActFormat::Q8_1 {
                a.s4 = a.tiles4(&a.s);
            }
            if a.fmt == ActFormat::Q8_K && a.n_x4 > 0 {
                a.token_lanes();
            }
        }
        a
    }

    /// The token-lane planes of tokens `0..n_x4` (see the module docs).
    fn token_lanes(&mut self) {
        let (nb, n) = (self.nb, self.n_x4);
        let tiles = n.div_ceil(8);
        let mut qs = vec![0i8; tiles * nb * 256 * 8];
        let mut bp = vec![0f32; tiles * nb * 64];
        let mut d = vec![0f32; tiles * nb * 8];
        let src = self.qs();
        let fill = |tile: usize, (qs, (bp, d)): (&mut [i8], (&mut [f32], &mut [f32]))| {
            for lane in 0..8.min(n - 8 * tile) {
                let t = 8 * tile + lane;
                let row = &src[t * self.qs_stride..];
                for b in 0..nb {
                    for g in 0..64 {
                        let o = ((b * 64 + g) * 8 + lane) * 4;
                        qs[o..o + 4].copy_from_slice(&row[b * 256 + 4 * g..b * 256 + 4 * g + 4]);
                    }
                    let bs = &self.bsums[(t * nb + b) * 16..];
                    for j in 0..8 {
                        bp[(b * 8 + j) * 8 + lane] =
                            (bs[2 * j] as i32 + bs[2 * j + 1] as i32) as f32;
                    }
                    d[b * 8 + lane] = self.d[t * self.sd_stride + b];
                }
            }
        };
        let chunks = qs
            .chunks_mut(nb * 2048)
            .zip(bp.chunks_mut(nb * 64).zip(d.chunks_mut(nb * 8)));
        if tiles >= 2 {
            chunks
                .collect::<Vec<_>>()
                .into_par_iter()
                .enumerate()
                .for_each(|(i, c)| fill(i, c));
        } else {
            chunks.enumerate().for_each(|(i, c)| fill(i, c));
        }
        (self.lane_qs, self.lane_bp, self.lane_d) = (qs, bp, d);
    }

    /// A per-block plane (`sd_stride` per token) transposed to `[tile][block][token % 4]`.
    fn tiles4(&self, v: &[f32]) -> Vec<f32> {
        let n_tiles = self.n_tokens.div_ceil(4);
        let mut out = vec![0f32; n_tiles * self.nb * 4];
        for t in 0..self.n_tokens {
            let (tile, lane) = (t / 4, t % 4);
            for b in 0..self.nb {
                out[(tile * self.nb + b) * 4 + lane] = v[t * self.sd_stride + b];
            }
        }
        out
    }

    /// The Q8_K sign rule of token `t`.
    pub fn q8k_sign(&self, t: usize) -> Q8kSign {
        if t < self.n_x4 {
            Q8kSign::PreferPositive
        } else {
            Q8kSign::First
        }
    }

    fn reference_blocks(&self) -> Vec<u8> {
        let (fmt, cols) = (self.fmt, self.cols);
        let mut blocks = vec![0u8; self.n_tokens * self.row_bytes];
        let quant = |(t, (xr, br)): (usize, (&[f32], &mut [u8]))| match fmt {
            ActFormat::Q8_0 => quantize_row_q8_0(xr, br),
            ActFormat::Q8_1 => quantize_row_q8_1(xr, br),
            ActFormat::Q8_K => quantize_row_q8_k(xr, br, self.q8k_sign(t)),
            ActFormat::F32 => unreachable!(),
        };
        if self.n_tokens >= PAR_TOKENS {
            self.x
                .par_chunks_exact(cols)
                .zip(blocks.par_chunks_exact_mut(self.row_bytes))
                .enumerate()
                .for_each(quant);
        } else {
            self.x
                .chunks_exact(cols)
                .zip(blocks.chunks_exact_mut(self.row_bytes))
                .enumerate()
                .for_each(quant);
        }
        blocks
    }

    fn alloc_planes(&mut self) {
        let nt = self.n_tokens;
        self.qs = vec![Line([0; 64]); nt * self.qs_stride / 64];
        self.d = vec![0.0; nt * self.sd_stride];
        if self.fmt == ActFormat::Q8_1 {
            self.s = vec![0.0; nt * self.sd_stride];
        }
        if self.fmt == ActFormat::Q8_K {
            self.bsums = vec![0; nt * self.nb * 16];
        }
        if let Codes::LaneOffset(_) = self.codes {
            self.qoff = vec![0; nt * self.nb * 8];
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
        let (fmt, cols, nb, n_x4, codes) = (self.fmt, self.cols, self.nb, self.n_x4, self.codes);
        let (qs_stride, sd) = (self.qs_stride, self.sd_stride);
        let x = self.x;
        let planes = Planes {
            qs: self.qs.as_mut_ptr() as *mut i8,
            d: self.d.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            bsums: self.bsums.as_mut_ptr(),
            qoff: self.qoff.as_mut_ptr(),
        };
        let row = |t: usize| {
            let p = &planes;
            let xr = &x[t * cols..(t + 1) * cols];
            // SAFETY: each token writes only its own rows of the planes, which were allocated
            // above with these strides (`s` only for Q8_1, `bsums` only for Q8_K); AVX2 was
            // checked above.
            unsafe {
                let qs = std::slice::from_raw_parts_mut(p.qs.add(t * qs_stride), qs_stride);
                let d = std::slice::from_raw_parts_mut(p.d.add(t * sd), sd);
                match fmt {
                    ActFormat::Q8_K => {
                        let bsums =
                            std::slice::from_raw_parts_mut(p.bsums.add(t * nb * 16), nb * 16);
                        q8_k_row(xr, qs, d, bsums, t < n_x4);
                    }
                    _ => {
                        let s = (fmt == ActFormat::Q8_1)
                            .then(|| std::slice::from_raw_parts_mut(p.s.add(t * sd), sd));
                        let qoff = match codes {
                            Codes::LaneOffset(_) => Some(std::slice::from_raw_parts_mut(
                                p.qoff.add(t * nb * 8),
                                nb * 8,
                            )),
                            _ => None,
                        };
                        q8_0_row(xr, qs, d, s, codes, qoff);
                    }
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
        let blk = self.fmt.block();
        self.alloc_planes();
        for t in 0..nt {
            let row = &blocks[t * self.row_bytes..(t + 1) * self.row_bytes];
            let qs_off = t * self.qs_stride;
            for (b, src) in row.chunks_exact(bb).enumerate() {
                let f16 = |o: usize| f16_to_f32(u16::from_le_bytes([src[o], src[o + 1]]));
                let (d, codes) = match self.fmt {
                    ActFormat::Q8_0 => (f16(0), &src[2..34]),
                    ActFormat::Q8_1 => {
                        self.s[t * self.sd_stride + b] = f16(2);
                        (f16(0), &src[4..36])
                    }
                    ActFormat::Q8_K => {
                        let d = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
                        for (k, pair) in src[260..292].chunks_exact(2).enumerate() {
                            self.bsums[(t * nb + b) * 16 + k] =
                                i16::from_le_bytes([pair[0], pair[1]]);
                        }
                        (d, &src[4..260])
                    }
                    ActFormat::F32 => unreachable!(),
                };
                self.d[t * self.sd_stride + b] = d;
                let bias = if self.codes == Codes::Biased { 0x80 } else { 0 };
                if let Codes::LaneOffset(off) = self.codes {
                    for k in 0..8 {
                        let sum: i32 = codes[4 * k..4 * k + 4]
                            .iter()
                            .map(|&c| c as i8 as i32)
                            .sum();
                        self.qoff[(t * nb + b) * 8 + k] = -off * sum;
                    }
                }
                let qs = self.qs_mut();
                for (i, &c) in codes.iter().enumerate() {
                    qs[qs_off + b * blk + i] = (c ^ bias) as i8;
                }
            }
        }
    }

    fn qs_mut(&mut self) -> &mut [i8] {
        let n = self.qs.len() * 64;
        // SAFETY: `Line` is a plain array of 64 i8 with no padding.
        unsafe { std::slice::from_raw_parts_mut(self.qs.as_mut_ptr() as *mut i8, n) }
    }

    /// All int8 code rows (plane layout, element order), `qs_stride` apart.
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
