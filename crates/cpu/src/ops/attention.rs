//! Causal attention over the paged KV cache, optionally windowed, with GQA.
//!
//! The math follows llama.cpp's CPU flash attention with its default F16 cache, so Kestrel gives
//! the same answers: K and V are stored as f16, Q is rounded to f16 for the scores, keys are visited
//! in order with an online softmax, and the V accumulator is kept in f16 (`acc = f16(fma(v, w, acc))`,
//! rescaled in f16 when a new maximum appears). Scores and the softmax sum are f32.
//!
//! A token whose prefill chunk holds [`TILE`] or more tokens takes llama.cpp's tiled flash
//! attention instead (`ggml_compute_forward_flash_attn_ext_tiled`, which ggml runs for a batch of
//! 64+ query rows): Q stays f32, keys are visited in tiles of 64 cells (cell = position here, as
//! in a fresh llama.cpp cache) with one online-softmax update per tile, f32 V accumulator. See
//! [`tiled_rows`].
//!
//! `attention_exact` is the f32 reference (an f32 cache, `CpuBackend::exact`): what the oracle
//! tests against Hugging Face transformers use.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// One layer's K/V pools: `n_slots` rows of `kv_dim` each, in f16 (`k`, `v`), or in f32
/// (`k32`, `v32`) for `attention_exact`; the other pair is empty.
pub struct KvPool {
    pub k: Vec<f16>,
    pub v: Vec<f16>,
    pub k32: Vec<f32>,
    pub v32: Vec<f32>,
    pub kv_dim: usize,
    pub exact: bool,
}

impl KvPool {
    pub fn new(n_slots: usize, kv_dim: usize) -> Self {
        KvPool {
            k: vec![f16::ZERO; n_slots * kv_dim],
            v: vec![f16::ZERO; n_slots * kv_dim],
            k32: Vec::new(),
            v32: Vec::new(),
            kv_dim,
            exact: false,
        }
    }

    /// An f32 cache, for `attention_exact`.
    pub fn new_f32(n_slots: usize, kv_dim: usize) -> Self {
        KvPool {
            k: Vec::new(),
            v: Vec::new(),
            k32: vec![0.0; n_slots * kv_dim],
            v32: vec![0.0; n_slots * kv_dim],
            kv_dim,
            exact: true,
        }
    }

    pub fn write(&mut self, slot: usize, k: &[f32], v: &[f32]) {
        let r = slot * self.kv_dim..(slot + 1) * self.kv_dim;
        if self.exact {
            self.k32[r.clone()].copy_from_slice(k);
            self.v32[r].copy_from_slice(v);
        } else {
            self.k[r.clone()].convert_from_f32_slice(k);
            self.v[r].convert_from_f32_slice(v);
        }
    }
}

/// Where each query token sits and which cache rows it may read.
pub struct AttnRows<'a> {
    pub positions: &'a [u32],
    /// Per token: whether it takes the tiled path (its chunk holds [`TILE`]+ tokens); empty: none.
    pub tiled: &'a [bool],
    pub seq_index: &'a [u32],
    pub block_tables: &'a [Vec<u32>],
    pub block_size: usize,
}

pub struct Geometry {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub window: Option<usize>,
    pub scale: f32,
}

/// Query rows (and key cells) per tile of llama.cpp's tiled flash attention (`GGML_FA_TILE_Q`,
/// `GGML_FA_TILE_KV`); ggml takes that path for a batch of this many query rows or more.
pub const TILE: usize = 64;

/// `q` is `[n_tokens, n_head * head_dim]`; `out` likewise.
pub fn attention(q: &[f32], kv: &KvPool, g: &Geometry, rows: &AttnRows, out: &mut [f32]) {
    let hd = g.head_dim;
    let group = g.n_head / g.n_kv_head;
    let simd = f16_simd();
    let tiled = |t: usize| rows.tiled.get(t).copied().unwrap_or(false);
    out.par_chunks_mut(hd).enumerate().for_each(|(i, o)| {
        let t = i / g.n_head;
        if tiled(t) {
            return;
        }
        let kvh = (i % g.n_head) / group;
        let pos = rows.positions[t] as usize;
        let lo = g.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let table = &rows.block_tables[rows.seq_index[t] as usize];
        let slot =
            |p: usize| table[p / rows.block_size] as usize * rows.block_size + p % rows.block_size;

        let mut qh = vec![f16::ZERO; hd];
        qh.convert_from_f32_slice(&q[i * hd..(i + 1) * hd]);
        let mut acc = vec![f16::ZERO; hd];
        let (mut m, mut sum) = (f32::NEG_INFINITY, 0.0f32);
        for p in lo..=pos {
            let off = slot(p) * kv.kv_dim + kvh * hd;
            let s = dot_f16(simd, &qh, &kv.k[off..off + hd]) * g.scale;
            let (mut ms, mut vs) = (1.0f32, 1.0f32);
            if s > m {
                ms = (m - s).exp();
                m = s;
                scale_f16(simd, &mut acc, ms);
            } else {
                vs = (s - m).exp();
            }
            mad_f16(simd, &mut acc, &kv.v[off..off + hd], vs);
            // `S = S*ms + vs`, which llama.cpp's build contracts to one FMA.
            sum = sum.mul_add(ms, vs);
        }
        let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
        for (o, a) in o.iter_mut().zip(&acc) {
            *o = a.to_f32() * inv;
        }
    });
    if rows.tiled.iter().any(|&b| b) {
        tiled_rows(q, kv, g, rows, out);
    }
}

/// The rows of tiled tokens, as `ggml_compute_forward_flash_attn_ext_tiled` computes each one:
/// per tile of [`TILE`] key cells holding a visible key, the scores `s_j = Σ_d q_d·k_jd` as one
/// FMA chain in `d` order on the f32 (unrounded) Q row and the f16 keys, times the scale, plus the
/// mask (0, or −∞ for invisible cells); `M' = max(M, max_j s_j)`; when it grows, the accumulator
/// and `S` times `expf(M − M')`; `w_j = ggml_v_expf(s_j − M')`; `S += Σ w` with the sum taken
/// as `_mm512_reduce_add_ps` over each 16 cells, in f64 across the four (f32 `S` + f64 sum,
/// rounded to f32); `acc_d = fma(v_jd, w_j, acc_d)` in `j` order. At the end `acc · (1/S)`.
///
/// Rows are processed in blocks of up to [`TILE`] that share a sequence and a KV head, so each
/// key tile is converted to f32 (transposed) once per block; the loops over the 64 cells of a
/// tile and over `d` are plain lane-wise code that the compiler vectorizes, each lane's operations
/// in the order above.
pub fn tiled_rows(q: &[f32], kv: &KvPool, g: &Geometry, rows: &AttnRows, out: &mut [f32]) {
    let hd = g.head_dim;
    let group = g.n_head / g.n_kv_head;
    // Blocks: (sequence, KV head) runs of rows (token, head), in token order.
    let mut keys: Vec<(u32, usize, usize)> = Vec::new(); // (seq, kvh, row)
    for (t, _) in rows.tiled.iter().enumerate().filter(|(_, &b)| b) {
        for h in 0..g.n_head {
            keys.push((rows.seq_index[t], h / group, t * g.n_head + h));
        }
    }
    keys.sort_by_key(|&(s, kvh, r)| (s, kvh, r));
    let mut blocks: Vec<&[(u32, usize, usize)]> = Vec::new();
    let mut start = 0;
    for i in 1..=keys.len() {
        if i == keys.len()
            || i - start == TILE
            || (keys[i].0, keys[i].1) != (keys[start].0, keys[start].1)
        {
            blocks.push(&keys[start..i]);
            start = i;
        }
    }
    let results: Vec<Vec<f32>> = blocks
        .par_iter()
        .map(|b| tiled_block(q, kv, g, rows, b))
        .collect();
    for (b, r) in blocks.iter().zip(&results) {
        for (k, &(_, _, row)) in b.iter().enumerate() {
            out[row * hd..(row + 1) * hd].copy_from_slice(&r[k * hd..(k + 1) * hd]);
        }
    }
}

fn tiled_block(
    q: &[f32],
    kv: &KvPool,
    g: &Geometry,
    rows: &AttnRows,
    block: &[(u32, usize, usize)],
) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were detected at run time.
        return unsafe { tiled_block_avx2(q, kv, g, rows, block) };
    }
    tiled_block_body(q, kv, g, rows, block)
}

/// `tiled_block_body` compiled with AVX2 and FMA: the same operations on 8 lanes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tiled_block_avx2(
    q: &[f32],
    kv: &KvPool,
    g: &Geometry,
    rows: &AttnRows,
    block: &[(u32, usize, usize)],
) -> Vec<f32> {
    tiled_block_body(q, kv, g, rows, block)
}

#[inline(always)]
fn tiled_block_body(
    q: &[f32],
    kv: &KvPool,
    g: &Geometry,
    rows: &AttnRows,
    block: &[(u32, usize, usize)],
) -> Vec<f32> {
    use crate::ops::act::ggml_v_expf;
    let hd = g.head_dim;
    let n = block.len();
    let (seq, kvh) = (block[0].0 as usize, block[0].1);
    let table = &rows.block_tables[seq];
    let slot =
        |p: usize| table[p / rows.block_size] as usize * rows.block_size + p % rows.block_size;
    let range = |row: usize| {
        let pos = rows.positions[row / g.n_head] as usize;
        (g.window.map_or(0, |w| (pos + 1).saturating_sub(w)), pos)
    };
    let (first, last) = block.iter().fold((usize::MAX, 0), |(a, b), &(_, _, r)| {
        let (lo, hi) = range(r);
        (a.min(lo), b.max(hi))
    });
    let mut m = vec![f32::NEG_INFINITY; n];
    let mut sums = vec![0f32; n];
    let mut acc = vec![0f32; n * hd];
    let mut kt = vec![0f32; hd * TILE]; // [d][j]
    let mut vt = vec![0f32; TILE * hd]; // [j][d]
    let mut krow = vec![0f32; hd];
    let mut sc = [0f32; TILE];
    let mut w = [0f32; TILE];
    for c0 in (first / TILE * TILE..=last).step_by(TILE) {
        // The tile's cells that some row of the block may see, converted once.
        let (a, b) = (first.max(c0), last.min(c0 + TILE - 1));
        kt.fill(0.0);
        vt.fill(0.0);
        for p in a..=b {
            let j = p - c0;
            let off = slot(p) * kv.kv_dim + kvh * hd;
            kv.k[off..off + hd].convert_to_f32_slice(&mut krow);
            for (d, &x) in krow.iter().enumerate() {
                kt[d * TILE + j] = x;
            }
            kv.v[off..off + hd].convert_to_f32_slice(&mut vt[j * hd..(j + 1) * hd]);
        }
        for (r, &(_, _, row)) in block.iter().enumerate() {
            let (lo, hi) = range(row);
            if hi < c0 || lo > c0 + TILE - 1 {
                continue;
            }
            let qr = &q[row * hd..(row + 1) * hd];
            sc.fill(0.0);
            for (d, &qd) in qr.iter().enumerate() {
                let k = &kt[d * TILE..(d + 1) * TILE];
                for (s, &kj) in sc.iter_mut().zip(k) {
                    *s = qd.mul_add(kj, *s);
                }
            }
            let mut tile_max = f32::NEG_INFINITY;
            for (j, s) in sc.iter_mut().enumerate() {
                let p = c0 + j;
                *s = if p >= lo && p <= hi {
                    *s * g.scale + 0.0
                } else {
                    f32::NEG_INFINITY
                };
                tile_max = if tile_max > *s { tile_max } else { *s };
            }
            let acc_r = &mut acc[r * hd..(r + 1) * hd];
            let m_new = m[r].max(tile_max);
            if m_new > m[r] {
                let ms = (m[r] - m_new).exp();
                acc_r.iter_mut().for_each(|x| *x *= ms);
                sums[r] *= ms;
            }
            m[r] = m_new;
            for (wj, &s) in w.iter_mut().zip(&sc) {
                *wj = ggml_v_expf(s - m_new);
            }
            let mut sum = 0f64;
            for v16 in w.chunks_exact(16) {
                sum += reduce_add_16(v16) as f64;
            }
            sums[r] = (sums[r] as f64 + sum) as f32;
            for (j, &wj) in w.iter().enumerate() {
                if wj == 0.0 {
                    continue; // fma(v, 0, acc) == acc
                }
                let v = &vt[j * hd..(j + 1) * hd];
                for (x, &vd) in acc_r.iter_mut().zip(v) {
                    *x = vd.mul_add(wj, *x);
                }
            }
        }
    }
    for (r, acc_r) in acc.chunks_exact_mut(hd).enumerate() {
        let inv = if sums[r] == 0.0 { 0.0 } else { 1.0 / sums[r] };
        acc_r.iter_mut().for_each(|x| *x *= inv);
    }
    acc
}

/// `_mm512_reduce_add_ps` as GCC expands it: halves added (lane i + lane i+8, then +4, +2, +1).
#[inline(always)]
fn reduce_add_16(v: &[f32]) -> f32 {
    let mut t = [0f32; 8];
    for i in 0..8 {
        t[i] = v[i] + v[i + 8];
    }
    let t4 = [t[0] + t[4], t[1] + t[5], t[2] + t[6], t[3] + t[7]];
    (t4[0] + t4[2]) + (t4[1] + t4[3])
}

/// Attention in f32 throughout, over an f32 cache (`KvPool::new_f32`): f32 Q·K scores, a
/// two-pass softmax, the weighted sum of V in f32.
pub fn attention_exact(q: &[f32], kv: &KvPool, g: &Geometry, rows: &AttnRows, out: &mut [f32]) {
    assert!(kv.exact, "attention_exact needs an f32 cache");
    let hd = g.head_dim;
    let group = g.n_head / g.n_kv_head;
    out.par_chunks_mut(hd).enumerate().for_each(|(i, o)| {
        let t = i / g.n_head;
        let kvh = (i % g.n_head) / group;
        let pos = rows.positions[t] as usize;
        let lo = g.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let table = &rows.block_tables[rows.seq_index[t] as usize];
        let row = |p: usize| {
            let slot = table[p / rows.block_size] as usize * rows.block_size + p % rows.block_size;
            slot * kv.kv_dim + kvh * hd..slot * kv.kv_dim + (kvh + 1) * hd
        };
        let qh = &q[i * hd..(i + 1) * hd];
        let scores: Vec<f32> = (lo..=pos)
            .map(|p| {
                let k = &kv.k32[row(p)];
                qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * g.scale
            })
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let inv = 1.0 / weights.iter().sum::<f32>();
        o.fill(0.0);
        for (p, w) in (lo..=pos).zip(&weights) {
            for (a, v) in o.iter_mut().zip(&kv.v32[row(p)]) {
                *a += w * v;
            }
        }
        o.iter_mut().for_each(|a| *a *= inv);
    });
}

fn f16_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Σ a·b over f16 vectors, summed in ggml's AVX-512 order (so scores match llama.cpp bit for bit):
/// four 16-lane FMA accumulators over 64-value steps, folded 0+2, 1+3, then 0+1, then the lanes
/// reduced as `_mm512_reduce_add_ps` does (i+8, i+4, i+2, i+1); a tail beyond the last whole step
/// is added in f64.
fn dot_f16(simd: bool, a: &[f16], b: &[f16]) -> f32 {
    let np = a.len() / 64 * 64;
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the features were detected at run time; both slices hold `np` values.
        let mut sum = unsafe { x86::dot_f16(a, b, np) } as f64;
        for k in np..a.len() {
            sum += (a[k].to_f32() * b[k].to_f32()) as f64;
        }
        return sum as f32;
    }
    let _ = simd;
    let mut acc = [[0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, lanes) in acc.iter_mut().enumerate() {
            for (l, s) in lanes.iter_mut().enumerate() {
                let k = i + 16 * j + l;
                *s = a[k].to_f32().mul_add(b[k].to_f32(), *s);
            }
        }
    }
    let mut v = [0f32; 16];
    for l in 0..16 {
        v[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    for width in [8, 4, 2, 1] {
        for l in 0..width {
            v[l] += v[l + width];
        }
    }
    let mut sum = v[0] as f64;
    for k in np..a.len() {
        sum += (a[k].to_f32() * b[k].to_f32()) as f64;
    }
    sum as f32
}

/// acc = f16(fma(v, w, acc))
fn mad_f16(simd: bool, acc: &mut [f16], v: &[f16], w: f32) {
    #[cfg(target_arch = "x86_64")]
    if simd && acc.len().is_multiple_of(8) {
        // SAFETY: the features were detected at run time.
        return unsafe { x86::mad_f16(acc, v, w) };
    }
    let _ = simd;
    for (a, x) in acc.iter_mut().zip(v) {
        *a = f16::from_f32(x.to_f32().mul_add(w, a.to_f32()));
    }
}

/// acc = f16(acc * s)
fn scale_f16(simd: bool, acc: &mut [f16], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if simd && acc.len().is_multiple_of(8) {
        // SAFETY: the features were detected at run time.
        return unsafe { x86::scale_f16(acc, s) };
    }
    let _ = simd;
    for a in acc.iter_mut() {
        *a = f16::from_f32(a.to_f32() * s);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    /// `dot_f16`'s first `np` (a multiple of 64) values: the 16-lane accumulators as two
    /// 8-lane halves, each lane's FMAs, folds and reduction steps in the same order.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(a: &[f16], b: &[f16], np: usize) -> f32 {
        assert!(a.len() >= np && b.len() >= np);
        let load = |s: &[f16], k: usize| {
            _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().add(k) as *const __m128i))
        };
        let mut lo = [_mm256_setzero_ps(); 4];
        let mut hi = [_mm256_setzero_ps(); 4];
        for i in (0..np).step_by(64) {
            for j in 0..4 {
                let k = i + 16 * j;
                lo[j] = _mm256_fmadd_ps(load(a, k), load(b, k), lo[j]);
                hi[j] = _mm256_fmadd_ps(load(a, k + 8), load(b, k + 8), hi[j]);
            }
        }
        let vlo = _mm256_add_ps(_mm256_add_ps(lo[0], lo[2]), _mm256_add_ps(lo[1], lo[3]));
        let vhi = _mm256_add_ps(_mm256_add_ps(hi[0], hi[2]), _mm256_add_ps(hi[1], hi[3]));
        let v8 = _mm256_add_ps(vlo, vhi);
        let v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps::<1>(v8));
        let v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
        let v1 = _mm_add_ss(v2, _mm_shuffle_ps::<1>(v2, v2));
        _mm_cvtss_f32(v1)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mad_f16(acc: &mut [f16], v: &[f16], w: f32) {
        let wv = _mm256_set1_ps(w);
        for (a, x) in acc.chunks_exact_mut(8).zip(v.chunks_exact(8)) {
            let av = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr() as *const __m128i));
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr() as *const __m128i));
            let r = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_fmadd_ps(xv, wv, av));
            _mm_storeu_si128(a.as_mut_ptr() as *mut __m128i, r);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scale_f16(acc: &mut [f16], s: f32) {
        let sv = _mm256_set1_ps(s);
        for a in acc.chunks_exact_mut(8) {
            let av = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr() as *const __m128i));
            let r = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(av, sv));
            _mm_storeu_si128(a.as_mut_ptr() as *mut __m128i, r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Head `h` of token `t` (at position `t`, one sequence, two query heads per KV head, scale
    /// 0.125) as a plain f64 softmax over the positions the window allows.
    fn plain_softmax_head(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (n_head, hd, kv_dim): (usize, usize, usize),
        t: usize,
        h: usize,
        window: Option<usize>,
    ) -> Vec<f64> {
        let kvh = h / 2;
        let lo = window.map_or(0, |w| (t + 1).saturating_sub(w));
        let qv = &q[(t * n_head + h) * hd..][..hd];
        let scores: Vec<f64> = (lo..=t)
            .map(|p| {
                let kr = &k[p * kv_dim + kvh * hd..][..hd];
                qv.iter()
                    .zip(kr)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum::<f64>()
                    * 0.125
            })
            .collect();
        let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..hd)
            .map(|d| {
                (lo..=t)
                    .zip(&e)
                    .map(|(p, w)| w * v[p * kv_dim + kvh * hd + d] as f64)
                    .sum::<f64>()
                    / z
            })
            .collect()
    }

    fn rand_vec(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Plain f64 softmax attention: the tolerance covers the f16 storage and accumulator (and
    /// f32 rounding for `attention_exact`).
    #[test]
    fn matches_a_plain_softmax_within_f16_rounding() {
        for (exact, tol) in [(false, 4e-3), (true, 1e-5)] {
            check_against_plain_softmax(exact, tol);
        }
    }

    fn check_against_plain_softmax(exact: bool, tol: f64) {
        let (n_head, n_kv, hd, n_tok) = (4, 2, 64, 37);
        let kv_dim = n_kv * hd;
        let mut pool = if exact {
            KvPool::new_f32(64, kv_dim)
        } else {
            KvPool::new(64, kv_dim)
        };
        let k = rand_vec(n_tok * kv_dim, 1);
        let v = rand_vec(n_tok * kv_dim, 2);
        // Scatter the positions over blocks in a non-trivial order.
        let table = vec![2u32, 0, 3];
        let slot = |p: usize| table[p / 16] as usize * 16 + p % 16;
        for p in 0..n_tok {
            pool.write(
                slot(p),
                &k[p * kv_dim..(p + 1) * kv_dim],
                &v[p * kv_dim..(p + 1) * kv_dim],
            );
        }
        let q = rand_vec(n_tok * n_head * hd, 3);
        let positions: Vec<u32> = (0..n_tok as u32).collect();
        let seq_index = vec![0u32; n_tok];
        let tables = vec![table.clone()];
        let rows = AttnRows {
            positions: &positions,
            tiled: &[],
            seq_index: &seq_index,
            block_tables: &tables,
            block_size: 16,
        };
        for window in [None, Some(5)] {
            let g = Geometry {
                n_head,
                n_kv_head: n_kv,
                head_dim: hd,
                window,
                scale: 0.125,
            };
            let mut out = vec![f32::NAN; q.len()];
            if exact {
                attention_exact(&q, &pool, &g, &rows, &mut out);
            } else {
                attention(&q, &pool, &g, &rows, &mut out);
            }
            for t in 0..n_tok {
                for h in 0..n_head {
                    let want = plain_softmax_head(&q, &k, &v, (n_head, hd, kv_dim), t, h, window);
                    for (d, want) in want.iter().enumerate() {
                        let want = *want;
                        let got = out[(t * n_head + h) * hd + d] as f64;
                        assert!(
                            (got - want).abs() < tol,
                            "t={t} h={h} d={d}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The tiled path (every token tiled) over several 64-cell tiles, paged blocks, GQA and a
    /// window: within f16-storage rounding of a plain softmax, and its vectorized build equal to
    /// the plain build bit for bit.
    #[test]
    fn tiled_rows_match_a_plain_softmax_and_the_simd_build() {
        let (n_head, n_kv, hd, n_tok) = (4, 2, 64, 150);
        let kv_dim = n_kv * hd;
        let mut pool = KvPool::new(16 * 12, kv_dim);
        let k = rand_vec(n_tok * kv_dim, 11);
        let v = rand_vec(n_tok * kv_dim, 12);
        let table: Vec<u32> = vec![3, 0, 7, 1, 9, 2, 11, 4, 5, 10];
        let slot = |p: usize| table[p / 16] as usize * 16 + p % 16;
        for p in 0..n_tok {
            pool.write(
                slot(p),
                &k[p * kv_dim..(p + 1) * kv_dim],
                &v[p * kv_dim..(p + 1) * kv_dim],
            );
        }
        let q = rand_vec(n_tok * n_head * hd, 13);
        let positions: Vec<u32> = (0..n_tok as u32).collect();
        let seq_index = vec![0u32; n_tok];
        let tables = vec![table.clone()];
        let tiled = vec![true; n_tok];
        let rows = AttnRows {
            positions: &positions,
            tiled: &tiled,
            seq_index: &seq_index,
            block_tables: &tables,
            block_size: 16,
        };
        for window in [None, Some(70)] {
            let g = Geometry {
                n_head,
                n_kv_head: n_kv,
                head_dim: hd,
                window,
                scale: 0.125,
            };
            let mut out = vec![f32::NAN; q.len()];
            attention(&q, &pool, &g, &rows, &mut out);
            for t in (0..n_tok).step_by(7) {
                for h in 0..n_head {
                    let want = plain_softmax_head(&q, &k, &v, (n_head, hd, kv_dim), t, h, window);
                    for (d, want) in want.iter().enumerate() {
                        let want = *want;
                        let got = out[(t * n_head + h) * hd + d] as f64;
                        assert!(
                            (got - want).abs() < 2e-3,
                            "t={t} h={h} d={d}: {got} vs {want}"
                        );
                    }
                }
            }
            // Blocks of rows as `tiled_rows` forms them: the plain build and the dispatched
            // (AVX2 + FMA where available) build give the same bits.
            for kvh in 0..n_kv {
                let block: Vec<(u32, usize, usize)> = (90..90 + TILE / 2)
                    .flat_map(|t| (kvh * 2..kvh * 2 + 2).map(move |h| (0, kvh, t * n_head + h)))
                    .collect();
                let a = tiled_block(&q, &pool, &g, &rows, &block);
                let b = tiled_block_body(&q, &pool, &g, &rows, &block);
                assert_eq!(
                    a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn simd_and_scalar_helpers_agree_exactly() {
        if !f16_simd() {
            return;
        }
        let a: Vec<f16> = rand_vec(64, 4).iter().map(|&x| f16::from_f32(x)).collect();
        let b: Vec<f16> = rand_vec(64, 5).iter().map(|&x| f16::from_f32(x)).collect();
        let mut x = a.clone();
        let mut y = a.clone();
        mad_f16(true, &mut x, &b, 0.37);
        mad_f16(false, &mut y, &b, 0.37);
        // The dot over several 64-value steps plus a tail, as in every head size used.
        for n in [64, 128, 256, 200] {
            let a: Vec<f16> = rand_vec(n, 6).iter().map(|&x| f16::from_f32(x)).collect();
            let b: Vec<f16> = rand_vec(n, 7).iter().map(|&x| f16::from_f32(x)).collect();
            let (s, v) = (dot_f16(true, &a, &b), dot_f16(false, &a, &b));
            assert_eq!(s.to_bits(), v.to_bits(), "dot of {n}: {s} vs {v}");
        }
        assert_eq!(x, y);
        scale_f16(true, &mut x, 0.61);
        scale_f16(false, &mut y, 0.61);
        assert_eq!(x, y);
        let (d1, d2) = (dot_f16(true, &a, &b), dot_f16(false, &a, &b));
        assert!((d1 - d2).abs() < 1e-5);
    }
}
