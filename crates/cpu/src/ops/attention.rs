//! Causal attention over the paged KV cache, optionally windowed, with GQA. K and V are stored as
//! f16 and Q is rounded to f16 for the scores, as llama.cpp's CPU backend does with its default
//! F16 cache; scores, softmax and the V sum are f32.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// One layer's K/V pools: `n_slots` rows of `kv_dim` each.
pub struct KvPool {
    pub k: Vec<f16>,
    pub v: Vec<f16>,
    pub kv_dim: usize,
}

impl KvPool {
    pub fn new(n_slots: usize, kv_dim: usize) -> Self {
        KvPool {
            k: vec![f16::ZERO; n_slots * kv_dim],
            v: vec![f16::ZERO; n_slots * kv_dim],
            kv_dim,
        }
    }

    pub fn write(&mut self, slot: usize, k: &[f32], v: &[f32]) {
        let r = slot * self.kv_dim..(slot + 1) * self.kv_dim;
        self.k[r.clone()].convert_from_f32_slice(k);
        self.v[r].convert_from_f32_slice(v);
    }
}

/// Where each query token sits and which cache rows it may read.
pub struct AttnRows<'a> {
    pub positions: &'a [u32],
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

/// `q` is `[n_tokens, n_head * head_dim]`; `out` likewise.
pub fn attention(q: &[f32], kv: &KvPool, g: &Geometry, rows: &AttnRows, out: &mut [f32]) {
    let hd = g.head_dim;
    let group = g.n_head / g.n_kv_head;
    out.par_chunks_mut(hd).enumerate().for_each(|(i, o)| {
        let t = i / g.n_head;
        let h = i % g.n_head;
        let kvh = h / group;
        let pos = rows.positions[t] as usize;
        let lo = g.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let table = &rows.block_tables[rows.seq_index[t] as usize];
        let slot = |p: usize| table[p / rows.block_size] as usize * rows.block_size + p % rows.block_size;

        let qh: Vec<f32> = q[i * hd..(i + 1) * hd]
            .iter()
            .map(|&x| f16::from_f32(x).to_f32())
            .collect();
        let mut krow = vec![0f32; hd];
        let mut scores = Vec::with_capacity(pos + 1 - lo);
        for p in lo..=pos {
            let off = slot(p) * kv.kv_dim + kvh * hd;
            kv.k[off..off + hd].convert_to_f32_slice(&mut krow);
            let dot: f32 = qh.iter().zip(&krow).map(|(a, b)| a * b).sum();
            scores.push(dot * g.scale);
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        o.fill(0.0);
        let mut vrow = vec![0f32; hd];
        for (p, &w) in (lo..=pos).zip(&scores) {
            let off = slot(p) * kv.kv_dim + kvh * hd;
            kv.v[off..off + hd].convert_to_f32_slice(&mut vrow);
            for (a, &b) in o.iter_mut().zip(&vrow) {
                *a += w * b;
            }
        }
        let inv = 1.0 / sum;
        for a in o.iter_mut() {
            *a *= inv;
        }
    });
}
