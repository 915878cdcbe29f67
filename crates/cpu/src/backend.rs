//! `Backend` for the host: weights stay zero-copy in the GGUF mapping, activations are `Vec<f32>`.

use std::sync::{Arc, Mutex};

use anyhow::bail;
use kestrel_engine::{AttnGeom, Backend, Chunk, StepInfo, WeightRef, KV_BLOCK};
use kestrel_gguf::{GgmlType, GgufFile};
use kestrel_model::{FfnKind, RopeSpec};
use rayon::prelude::*;

use crate::ops::act::{gated, gated_with, geglu, gelu_tanh_exact, silu};
use crate::ops::attention::{attention, attention_exact, AttnRows, Geometry, KvPool};
use crate::ops::elementwise;
use crate::ops::matmul::{dequantize_rows, matmul_chunked, WeightMatrix};
use crate::ops::norm::rms_norm;
use crate::ops::rope::{rope_row, Rope};

/// How the CPU backend rounds outside the matmul.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// As llama.cpp's CPU backend with its default cache, so answers match its reference
    /// outputs: K/V stored as f16, Q rounded to f16, an f16 V accumulator, GELU from an f16
    /// table.
    #[default]
    LlamaCpp,
    /// f32 everywhere: an f32 KV cache and attention, the GELU formula. The reference for
    /// comparisons with f32 frameworks (the Hugging Face oracle tests). Quantized weights
    /// still meet 8-bit quantized activations, as in every mode.
    Exact,
}

pub struct CpuBackend {
    precision: Precision,
    /// The current step's token chunks, for `matmul` (whose arguments don't include the step):
    /// the kernel route of each token follows its chunk (`matmul_chunked`).
    chunks: Mutex<Vec<Chunk>>,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::with_precision(Precision::LlamaCpp)
    }

    /// f32 attention, cache and GELU (`Precision::Exact`).
    pub fn exact() -> Self {
        Self::with_precision(Precision::Exact)
    }

    pub fn with_precision(precision: Precision) -> Self {
        CpuBackend {
            precision,
            chunks: Mutex::new(Vec::new()),
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// A weight: quantized matrices stay in the mapping; small f32 vectors (norms, biases) are
/// decoded once.
pub struct CpuWeight {
    file: Arc<GgufFile>,
    range: std::ops::Range<usize>,
    ty: GgmlType,
    cols: usize,
    rows: usize,
    /// Dequantized copy for 1-D tensors.
    vec: Vec<f32>,
}

impl CpuWeight {
    fn matrix(&self) -> WeightMatrix<'_> {
        WeightMatrix {
            ty: self.ty,
            data: &self.file.bytes()[self.range.clone()],
            rows: self.rows,
            cols: self.cols,
        }
    }
}

pub struct CpuTensor {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

pub struct CpuStep {
    info: StepInfo,
}

impl Backend for CpuBackend {
    type Weight = CpuWeight;
    type Tensor = CpuTensor;
    type Kv = KvPool;
    type Step = CpuStep;

    fn name(&self) -> String {
        format!("CPU ({} threads)", rayon::current_num_threads())
    }

    fn upload(&self, w: WeightRef) -> anyhow::Result<CpuWeight> {
        let cols = w.shape[0] as usize;
        let rows = w.shape[1..].iter().product::<u64>() as usize;
        let mut vec = Vec::new();
        if w.shape.len() == 1 {
            vec = vec![0f32; cols];
            kestrel_gguf::quant::dequantize(w.ty, w.data(), &mut vec)
                .map_err(|e| anyhow::anyhow!("cannot decode {}: {e}", w.name))?;
        } else if !crate::ops::matmul::supports(w.ty) {
            bail!("weight type {} is not supported by the CPU backend", w.ty);
        }
        Ok(CpuWeight {
            file: w.file.clone(),
            range: w.range.clone(),
            ty: w.ty,
            cols,
            rows,
            vec,
        })
    }

    fn alloc(&self, rows: usize, cols: usize) -> CpuTensor {
        CpuTensor {
            data: vec![0.0; rows * cols],
            rows,
            cols,
        }
    }

    fn alloc_kv(&self, n_slots: usize, kv_dim: usize) -> anyhow::Result<KvPool> {
        Ok(match self.precision {
            Precision::LlamaCpp => KvPool::new(n_slots, kv_dim),
            Precision::Exact => KvPool::new_f32(n_slots, kv_dim),
        })
    }

    fn begin_step(&self, step: &StepInfo) -> CpuStep {
        *self.chunks.lock().unwrap_or_else(|e| e.into_inner()) = step.chunks.clone();
        CpuStep { info: step.clone() }
    }

    fn embed(&self, table: &CpuWeight, step: &CpuStep, scale: f32, out: &mut CpuTensor) {
        dequantize_rows(&table.matrix(), &step.info.tokens, &mut out.data);
        if scale != 1.0 {
            out.data.iter_mut().for_each(|v| *v *= scale);
        }
    }

    fn rms_norm(
        &self,
        x: &CpuTensor,
        w: Option<&CpuWeight>,
        width: usize,
        eps: f32,
        out: &mut CpuTensor,
    ) {
        let w = w.map(|w| w.vec.as_slice());
        x.data
            .par_chunks(x.cols)
            .zip(out.data.par_chunks_mut(x.cols))
            .for_each(|(xr, or)| rms_norm(xr, w, width, eps, or));
    }

    fn matmul(&self, w: &CpuWeight, x: &CpuTensor, out: &mut CpuTensor) {
        let chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        if x.rows == chunks.len() {
            matmul_chunked(&w.matrix(), &x.data, &chunks, &mut out.data);
        } else {
            // Not the step's token rows (the logit rows, one per sequence; or no step yet):
            // each row is computed as if alone, as a decode token is.
            let single = vec![Chunk::SINGLE; x.rows];
            matmul_chunked(&w.matrix(), &x.data, &single, &mut out.data);
        }
    }

    fn add_bias(&self, x: &mut CpuTensor, bias: &CpuWeight) {
        for row in x.data.chunks_exact_mut(x.cols) {
            row.iter_mut().zip(&bias.vec).for_each(|(a, b)| *a += b);
        }
    }

    fn rope(
        &self,
        x: &mut CpuTensor,
        head_dim: usize,
        rope: &RopeSpec,
        factors: Option<&CpuWeight>,
        step: &CpuStep,
    ) {
        let r = Rope {
            head_dim,
            n_rot: rope.n_rot,
            base: rope.base,
            freq_scale: rope.freq_scale,
            neox: rope.neox,
            factors: rope
                .freq_factors
                .as_ref()
                .and(factors)
                .map(|f| f.vec.as_slice()),
        };
        x.data
            .par_chunks_mut(x.cols)
            .zip(&step.info.positions)
            .for_each(|(row, &pos)| rope_row(row, &r, pos));
    }

    fn kv_write(&self, k: &CpuTensor, v: &CpuTensor, kv: &mut KvPool, step: &CpuStep) {
        for (t, &slot) in step.info.slots.iter().enumerate() {
            let r = t * k.cols..(t + 1) * k.cols;
            kv.write(slot as usize, &k.data[r.clone()], &v.data[r]);
        }
    }

    fn attention(
        &self,
        q: &CpuTensor,
        kv: &KvPool,
        g: AttnGeom,
        step: &CpuStep,
        out: &mut CpuTensor,
    ) {
        // llama.cpp's tiled flash attention for tokens of 64+-token chunks (f16 path otherwise).
        let tiled: Vec<bool> = if step.info.chunks.len() == step.info.positions.len() {
            step.info
                .chunks
                .iter()
                .map(|c| c.len as usize >= crate::ops::attention::TILE)
                .collect()
        } else {
            Vec::new()
        };
        let rows = AttnRows {
            positions: &step.info.positions,
            tiled: &tiled,
            seq_index: &step.info.seq_index,
            block_tables: &step.info.block_tables,
            block_size: KV_BLOCK,
        };
        let geom = Geometry {
            n_head: g.n_head,
            n_kv_head: g.n_kv_head,
            head_dim: g.head_dim,
            window: g.window,
            scale: g.scale,
        };
        match self.precision {
            Precision::LlamaCpp => attention(&q.data, kv, &geom, &rows, &mut out.data),
            Precision::Exact => attention_exact(&q.data, kv, &geom, &rows, &mut out.data),
        }
    }

    fn gated_act(&self, gate: &mut CpuTensor, up: &CpuTensor, kind: FfnKind) {
        let exact = self.precision == Precision::Exact;
        gate.data
            .par_chunks_mut(4096)
            .zip(up.data.par_chunks(4096))
            .for_each(|(g, u)| match kind {
                FfnKind::SiluGated => gated(g, u, silu),
                FfnKind::GeluTanhGated if exact => gated(g, u, gelu_tanh_exact),
                FfnKind::GeluTanhGated => gated_with(g, u, geglu),
            });
    }

    fn add(&self, x: &mut CpuTensor, y: &CpuTensor) {
        x.data.iter_mut().zip(&y.data).for_each(|(a, b)| *a += b);
    }

    fn scale_by(&self, x: &mut CpuTensor, s: &CpuWeight) {
        let s = s.vec[0];
        x.data.iter_mut().for_each(|v| *v *= s);
    }

    fn scale(&self, x: &mut CpuTensor, c: f32) {
        elementwise::scale(&mut x.data, c);
    }

    fn copy_cols(&self, src: &CpuTensor, col0: usize, out: &mut CpuTensor) {
        elementwise::copy_cols(&src.data, src.cols, col0, &mut out.data, out.cols);
    }

    fn gather_logit_rows(&self, x: &CpuTensor, step: &CpuStep, out: &mut CpuTensor) {
        for (o, &r) in out.data.chunks_exact_mut(x.cols).zip(&step.info.logit_rows) {
            let r = r as usize;
            o.copy_from_slice(&x.data[r * x.cols..(r + 1) * x.cols]);
        }
    }

    fn softcap(&self, x: &mut CpuTensor, cap: f32) {
        x.data.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
    }

    fn copy(&self, src: &CpuTensor, dst: &mut CpuTensor) {
        dst.data.copy_from_slice(&src.data);
    }

    fn read(&self, x: &CpuTensor) -> Vec<f32> {
        x.data.clone()
    }

    fn chunk_invariant(&self, c: Chunk) -> bool {
        // The matmul route of the chunk's bulk, and the tiled attention (64+-token chunks; a
        // shorter chunk takes the f16 path, whose bits differ).
        crate::quant_dot::bulk_of_chunk(c.len as usize, c.index as usize)
            && c.len as usize >= crate::ops::attention::TILE
    }
}
