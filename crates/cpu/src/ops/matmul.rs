//! Quantized matrix multiplication: `out[t][r] = Σ_k W[r][k] · x[t][k]`.
//!
//! Activations are quantized once per call to the weight type's activation format
//! (`quant_dot::acts`), then every (row, token) pair is one block-wise integer dot product
//! (`quant_dot`), summed in the order of the kernel llama.cpp runs for that weight type and
//! batch size (`quant_dot::route`), so results equal llama.cpp's CPU backend bit for bit. rayon splits the output rows into chunks; inside a chunk, tokens are taken
//! a kernel's tile (4 or 8) at a time and each weight row is decoded once for the whole tile, so prefill reuses
//! weights from cache instead of streaming them once per token.
//!
//! Threading note: each call is one rayon fork-join. Called from a thread outside the pool,
//! every call also pays a hand-off to a pool thread and back (futex wake-ups, ~10 µs); a
//! forward pass that runs inside the pool (`ThreadPool::install`, `rayon::scope`) does not.
//! Tiny products (< `SERIAL_MACS`) run on the calling thread.

use kestrel_gguf::quant::dequantize_row;
use kestrel_gguf::GgmlType;
use rayon::prelude::*;

use kestrel_engine::Chunk;

use crate::quant_dot::{self, ActFormat, Acts, Layout, Route, SimdLevel};

/// A 2-D GGUF tensor: ggml shape `[cols (ne0, contiguous), rows (ne1)]`, rows packed back to
/// back in the type's block format.
#[derive(Clone, Copy, Debug)]
pub struct WeightMatrix<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

impl WeightMatrix<'_> {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols as u64).unwrap_or_else(|| {
            panic!(
                "{} matrix: {} columns are not a multiple of the block size {}",
                self.ty,
                self.cols,
                self.ty.block_size()
            )
        }) as usize
    }

    /// Row `r`'s bytes.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}

/// Weight types `matmul` accepts: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K.
pub fn supports(ty: GgmlType) -> bool {
    ActFormat::for_weight(ty).is_some()
}

/// `out[t * rows + r] = Σ_k W[r][k] · x[t * cols + k]` for `t` in `0..n_tokens`, on the SIMD
/// level chosen at start-up (`quant_dot::selected`, `KESTREL_CPU_SIMD` forces one).
///
/// # Panics
/// If `w.ty` has no matmul support, `cols` is not a whole number of blocks, or a slice is
/// shorter than the shapes say.
pub fn matmul(w: &WeightMatrix, x: &[f32], n_tokens: usize, out: &mut [f32]) {
    matmul_with(quant_dot::selected(), w, x, n_tokens, out)
}

/// [`matmul`] on an explicit SIMD level (capped at what the CPU supports); for tests and
/// benchmarks that compare paths in one process.
pub fn matmul_with(
    level: SimdLevel,
    w: &WeightMatrix,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) {
    check_shapes(w, x, n_tokens, out);
    if w.rows == 0 || n_tokens == 0 {
        return;
    }
    let route = quant_dot::route(w.ty, w.rows, n_tokens);
    let n_x4 = quant_dot::gemm_tokens(route, n_tokens);
    matmul_on_route(level, w, x, n_tokens, route, n_x4, out);
}

fn check_shapes(w: &WeightMatrix, x: &[f32], n_tokens: usize, out: &[f32]) {
    let (rows, cols) = (w.rows, w.cols);
    if !supports(w.ty) {
        panic!("matmul: weight type {} is not supported", w.ty);
    }
    let rb = w.row_bytes();
    assert!(
        w.data.len() >= rows * rb,
        "matmul: {} {rows}×{cols} needs {} bytes, got {}",
        w.ty,
        rows * rb,
        w.data.len()
    );
    assert!(
        x.len() >= n_tokens * cols,
        "matmul: x has {} values < {n_tokens} × {cols}",
        x.len()
    );
    assert!(
        out.len() >= n_tokens * rows,
        "matmul: out has {} values < {n_tokens} × {rows}",
        out.len()
    );
}

/// The body of [`matmul_with`] on a given route, tokens `0..n_x4` through its GEMM (shapes
/// already checked).
fn matmul_on_route(
    level: SimdLevel,
    w: &WeightMatrix,
    x: &[f32],
    n_tokens: usize,
    route: Route,
    n_x4: usize,
    out: &mut [f32],
) {
    let (rows, cols) = (w.rows, w.cols);
    let fmt = ActFormat::for_weight(w.ty).expect("checked by the caller");
    let rb = w.row_bytes();
    let kernel = quant_dot::row_kernel(w.ty, route, level).expect("supported type");
    let level = kernel.level;
    let layout = if level == SimdLevel::Scalar {
        Layout::Blocks
    } else {
        Layout::Planes
    };
    let codes = quant_dot::codes_for(w.ty, level, n_tokens);
    let acts = Acts::build(fmt, x, n_tokens, cols, layout, n_x4, codes);

    let chunk = rows_per_task(rows);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let task = |c: usize| {
        let out_ptr = &out_ptr;
        let r_end = ((c + 1) * chunk).min(rows);
        let mut t0 = 0;
        while t0 < n_tokens {
            let nt = (n_tokens - t0).min(kernel.tile);
            for r in c * chunk..r_end {
                // SAFETY: this task alone writes rows `c*chunk..r_end` of every token;
                // `out` holds `n_tokens × rows` values (checked above); the kernel was
                // selected for a level the CPU supports and `row` is one weight row.
                let row = &w.data[r * rb..(r + 1) * rb];
                unsafe { (kernel.run)(row, &acts, t0, nt, out_ptr.0.add(t0 * rows + r), rows) };
            }
            t0 += nt;
        }
    };
    let n_tasks = rows.div_ceil(chunk);
    if rows * cols * n_tokens < SERIAL_MACS {
        // A few microseconds of work: handing it to the pool would cost more.
        (0..n_tasks).for_each(task);
    } else {
        (0..n_tasks).into_par_iter().for_each(task);
    }
}

/// [`matmul`] over tokens that belong to chunks (`chunks[t]` for token `t`): every token gets
/// exactly the bits it would get if its chunk ran alone (llama.cpp's kernel route, and so the
/// rounding, depends on the tokens per call: [`quant_dot::route`], [`quant_dot::gemm_tokens`]),
/// whatever else shares the call. Tokens are grouped by the route their chunk takes and each
/// group runs as one call, so a step of many decodes still reads each weight once.
pub fn matmul_chunked(w: &WeightMatrix, x: &[f32], chunks: &[Chunk], out: &mut [f32]) {
    let (rows, cols, n) = (w.rows, w.cols, chunks.len());
    check_shapes(w, x, n, out);
    if rows == 0 || n == 0 {
        return;
    }
    // (route, through the GEMM) of each token.
    let mode = |c: &Chunk| {
        let len = c.len as usize;
        let route = quant_dot::route(w.ty, rows, len);
        (
            route,
            (c.index as usize) < quant_dot::gemm_tokens(route, len),
        )
    };
    let modes: Vec<(Route, bool)> = chunks.iter().map(mode).collect();
    let mut kinds: Vec<(Route, bool)> = Vec::new();
    for m in &modes {
        if !kinds.contains(m) {
            kinds.push(*m);
        }
    }
    let level = quant_dot::selected();
    if let [(route, gemm)] = kinds[..] {
        if !gemm || n.is_multiple_of(4) {
            return matmul_on_route(level, w, x, n, route, if gemm { n } else { 0 }, out);
        }
    }
    for (route, gemm) in kinds {
        let members: Vec<usize> = (0..n).filter(|&t| modes[t] == (route, gemm)).collect();
        // The GEMM takes tokens four at a time: pad with copies of a member (their results
        // are dropped; every token's result depends on its own row only).
        let m = if gemm {
            members.len().next_multiple_of(4)
        } else {
            members.len()
        };
        let mut xg = Vec::with_capacity(m * cols);
        for i in 0..m {
            let t = members[i.min(members.len() - 1)];
            xg.extend_from_slice(&x[t * cols..(t + 1) * cols]);
        }
        let mut og = vec![0f32; m * rows];
        matmul_on_route(level, w, &xg, m, route, if gemm { m } else { 0 }, &mut og);
        for (i, &t) in members.iter().enumerate() {
            out[t * rows..(t + 1) * rows].copy_from_slice(&og[i * rows..(i + 1) * rows]);
        }
    }
}

/// Below this many multiply-adds a matmul runs on the calling thread.
const SERIAL_MACS: usize = 1 << 18;

/// Rows per rayon task: about 16 tasks per thread so both cores stay busy to the end, at
/// least 16 rows so per-task overhead stays small, at most 256.
fn rows_per_task(rows: usize) -> usize {
    let per = rows / (rayon::current_num_threads().max(1) * 16);
    per.clamp(16, 256)
}

struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint elements (see `matmul_with`).
unsafe impl Sync for SendPtr {}

/// Embedding lookup: `out[i * cols..(i + 1) * cols]` = row `rows[i]` of `w`, dequantized with
/// the gguf reference dequantizer.
///
/// # Panics
/// If a row index is out of range, the type cannot be dequantized, or `out` is too short.
pub fn dequantize_rows(w: &WeightMatrix, rows: &[u32], out: &mut [f32]) {
    let cols = w.cols;
    assert!(
        out.len() >= rows.len() * cols,
        "dequantize_rows: out has {} values < {} × {cols}",
        out.len(),
        rows.len()
    );
    for (&r, dst) in rows.iter().zip(out.chunks_exact_mut(cols)) {
        assert!(
            (r as usize) < w.rows,
            "dequantize_rows: row {r} of {} rows",
            w.rows
        );
        dequantize_row(w.ty, w.data, r as usize, cols, dst)
            .unwrap_or_else(|e| panic!("dequantize_rows: {e}"));
    }
}
