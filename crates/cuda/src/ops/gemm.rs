//! out = x · Wᵀ for many rows: the weight as bf16 (a resident copy made at load, or dequantized
//! into arena scratch per call), x rounded to bf16, then one cuBLAS GEMM (bf16 × bf16, f32
//! accumulation, f32 output) on the tensor cores. `ops/matmul.rs` sends a matmul here when it
//! has at least `GemmRows` rows (the matvecs, which re-read the weight once per 8 rows, keep
//! the small ones); kernels/convert.cu does the conversions.
//!
//! - **Layouts.** Row-major `W [rows][cols]` is, to column-major cuBLAS, a `cols × rows` matrix;
//!   x `[n][cols]` a `cols × n` one; out `[n][rows]` a `rows × n` one. So out = Wᵀ·x is
//!   `gemm(T, N, m = rows, n, k = cols)`, the layout cuBLAS runs fastest. The bf16 rows are
//!   `ld` = cols rounded up to 8 values long (16-byte aligned rows), the padding zero.
//! - **Scratch.** Without a resident copy, the weight is dequantized in chunks of rows of at
//!   most `CHUNK_BYTES` (so an LM head does not need gigabytes), each chunk's GEMM writing its
//!   columns of `out` (ldc = rows). The bf16 input and cuBLAS's workspace come from the arena:
//!   `begin_step` places them after the quantized-input buffer when the step is large enough for
//!   GEMMs, at fixed addresses (so a decode step of 16-64 sequences records into a CUDA graph),
//!   and q/k/v (gate/up) of one input share one conversion, as they share one quantization.
//! - **The weight cache** (`CudaBackend::cache_weights`, `--weight-cache auto` in the CLI): bf16
//!   copies of the largest layer matrices that fit in free memory after a reserve, made once
//!   at load.
//!
//! Precision: both operands are rounded to bf16 (relative error ≤ 2⁻⁹ each) and summed in f32;
//! tests/gemm.rs derives its tolerances from that.

use std::sync::{Mutex, MutexGuard};

use anyhow::{anyhow, bail, Result};
use cudarc::cublas::{result as blas, sys as bsys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use kestrel_gguf::GgmlType;

use crate::backend::{grid_for, Arg, CudaBackend, CudaTensor, CudaWeight};

/// cuBLAS's workspace (the size NVIDIA recommends for Hopper), from the arena.
pub const WORKSPACE_BYTES: usize = 32 << 20;
/// Most bf16 bytes of one weight chunk dequantized into scratch.
pub const CHUNK_BYTES: usize = 256 << 20;

/// Fewest rows (tokens) a matmul needs to take the GEMM path, by whether its weight has a
/// resident bf16 copy; None: never. Defaults measured on the H200 (docs/benchmarks/cuda-prefill.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmRows {
    pub cached: Option<usize>,
    pub scratch: Option<usize>,
}

impl GemmRows {
    // With a resident copy: from 5 rows. The matvecs gave 4 sequences of qwen3-8b 710 t/s
    // against the GEMM path's 609 once their weight-stationary kernels improved (mv merge,
    // docs/benchmarks/cuda-matvec.md), while at 16 rows the GEMM path is 2x faster.
    pub const DEFAULT: GemmRows = GemmRows {
        cached: Some(5),
        scratch: Some(12),
    };

    /// Every matmul on the matvecs.
    pub const OFF: GemmRows = GemmRows {
        cached: None,
        scratch: None,
    };

    fn min(&self) -> Option<usize> {
        match (self.cached, self.scratch) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A resident bf16 copy of a weight: `rows × ld` values.
pub struct Bf16Weight {
    _buf: CudaSlice<u8>,
    pub(crate) ptr: u64,
}

/// The cuBLAS handle (bound to the backend's stream).
struct Blas(bsys::cublasHandle_t);

// SAFETY: the handle is used under the `GemmState::blas` mutex only, one call at a time.
unsafe impl Send for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created by `create_handle`, destroyed once.
        let _ = unsafe { blas::destroy_handle(self.0) };
    }
}

/// The step's bf16 input buffer and workspace (arena, allocated by `begin_step`), and which
/// input the buffer holds.
#[derive(Default)]
struct StepBufs {
    xbuf: Option<CudaTensor>,
    xbuf_bytes: usize,
    ws: Option<CudaTensor>,
    /// (address, rows, cols) of the f32 input whose bf16 rows `xbuf` holds.
    cached: Option<(u64, usize, usize)>,
}

/// The GEMM path's part of the backend.
pub struct GemmState {
    blas: Option<Mutex<Blas>>,
    /// Why there is no cuBLAS (for the load line).
    why_not: Option<String>,
    rows: Mutex<GemmRows>,
    step: Mutex<StepBufs>,
}

impl GemmState {
    /// Open cuBLAS on `stream` (the context must be current), unless `KESTREL_CUDA_GEMM=0`.
    /// `KESTREL_CUDA_GEMM_ROWS=N` sets both thresholds to N.
    pub(crate) fn new(stream: &CudaStream) -> GemmState {
        let env = |k: &str| std::env::var(k).unwrap_or_default();
        let mut rows = GemmRows::DEFAULT;
        if let Ok(n) = env("KESTREL_CUDA_GEMM_ROWS").parse::<usize>() {
            rows = GemmRows {
                cached: Some(n.max(1)),
                scratch: Some(n.max(1)),
            };
        }
        let (blas, why_not) = if matches!(env("KESTREL_CUDA_GEMM").as_str(), "0" | "off" | "false")
        {
            (None, Some("KESTREL_CUDA_GEMM=0".to_string()))
        } else {
            match open_blas(stream) {
                Ok(b) => (Some(Mutex::new(b)), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            }
        };
        GemmState {
            blas,
            why_not,
            rows: Mutex::new(rows),
            step: Mutex::new(StepBufs::default()),
        }
    }

    fn step(&self) -> MutexGuard<'_, StepBufs> {
        self.step.lock().expect("gemm step lock")
    }

    /// Forget the converted input if `bytes` at `ptr` overlap it.
    pub(crate) fn wrote(&self, ptr: u64, bytes: usize) {
        let mut s = self.step();
        if let Some((src, rows, cols)) = s.cached {
            let len = (rows * cols * 4) as u64;
            if ptr < src + len && src < ptr + bytes as u64 {
                s.cached = None;
            }
        }
    }

    /// Forget the converted input (a launch that may write anywhere).
    pub(crate) fn forget(&self) {
        self.step().cached = None;
    }
}

fn open_blas(stream: &CudaStream) -> Result<Blas> {
    // SAFETY: only tries to dlopen the library by its candidate names.
    if !unsafe { bsys::is_culib_present() } {
        bail!("libcublas cannot be loaded (put CUDA's lib64 folder on LD_LIBRARY_PATH)");
    }
    let h = blas::create_handle().map_err(|e| anyhow!("cublasCreate: {e:?}"))?;
    let blas = Blas(h);
    // SAFETY: a live handle and the backend's live stream.
    unsafe { blas::set_stream(blas.0, stream.cu_stream() as bsys::cudaStream_t) }
        .map_err(|e| anyhow!("cublasSetStream: {e:?}"))?;
    Ok(blas)
}

/// Values per bf16 row of a weight with `cols` columns.
pub fn ld(cols: usize) -> usize {
    cols.next_multiple_of(8)
}

/// Whether the GEMM path can take weights of this type.
pub fn supports(ty: GgmlType) -> bool {
    crate::backend::supports_matmul(ty)
}

/// Whether `matmul` should send `n_tok` rows through the GEMM path for `w`.
pub fn takes(b: &CudaBackend, w: &CudaWeight, n_tok: usize) -> bool {
    let g = &b.gemm;
    if g.blas.is_none() || !supports(w.ty) {
        return false;
    }
    let rows = *g.rows.lock().expect("gemm rows lock");
    let min = if w.bf16.get().is_some() {
        rows.cached
    } else {
        rows.scratch
    };
    min.is_some_and(|m| n_tok >= m)
}

/// At `begin_step` (after the quantized-input buffer): the bf16 input buffer and cuBLAS's
/// workspace, when a step of `n` tokens may run GEMMs on inputs of up to `max_cols` columns.
pub(crate) fn begin_step(b: &CudaBackend, n: usize, max_cols: usize) {
    let g = &b.gemm;
    {
        let mut s = g.step();
        s.cached = None;
        s.xbuf = None;
        s.ws = None;
        s.xbuf_bytes = 0;
    }
    let min = g.rows.lock().expect("gemm rows lock").min();
    if g.blas.is_none() || max_cols == 0 || min.is_none_or(|m| n < m) {
        return;
    }
    let bytes = 2 * n * ld(max_cols);
    let xbuf = b.scratch(bytes);
    let ws = b.scratch(WORKSPACE_BYTES);
    let mut s = g.step();
    s.xbuf = Some(xbuf);
    s.xbuf_bytes = bytes;
    s.ws = Some(ws);
}

/// Launch the dequantize-to-bf16 kernel: `rows` rows of `w` from row `r0` into `out`.
fn dequantize(b: &CudaBackend, w: &CudaWeight, r0: usize, rows: usize, out: u64) {
    let ld = ld(w.cols);
    let groups = rows * ld / 8;
    if groups == 0 {
        return;
    }
    b.launch_w(
        "dequant_bf16",
        (grid_for(groups, 256), 1, 1),
        (256, 1, 1),
        0,
        &[
            Arg::I32(w.kernel_type()),
            Arg::Ptr(w.ptr + (r0 * w.row_bytes) as u64),
            Arg::U64(w.row_bytes as u64),
            Arg::I32(w.cols as i32),
            Arg::I32(ld as i32),
            Arg::Ptr(out),
            Arg::U64(groups as u64),
        ],
        (out, rows * ld * 2),
    );
}

/// x as bf16 rows of `ld(x.cols)`: in the step's buffer (remembered, so the next matmul of the
/// same input reuses it) when it fits, else in scratch (returned, to be held until the GEMM
/// is queued).
fn bf16_input(b: &CudaBackend, x: &CudaTensor) -> (u64, Option<CudaTensor>) {
    let ld = ld(x.cols);
    let bytes = x.rows * ld * 2;
    let key = (x.ptr, x.rows, x.cols);
    let target = {
        let s = b.gemm.step();
        if s.cached == Some(key) {
            return (
                s.xbuf.as_ref().expect("a cached input lives in xbuf").ptr,
                None,
            );
        }
        s.xbuf
            .as_ref()
            .filter(|_| bytes <= s.xbuf_bytes)
            .map(|t| t.ptr)
    };
    let (ptr, scratch) = match target {
        Some(p) => (p, None),
        None => {
            let t = b.scratch(bytes);
            (t.ptr, Some(t))
        }
    };
    let groups = x.rows * ld / 8;
    b.launch_w(
        "f32_to_bf16",
        (grid_for(groups, 256), 1, 1),
        (256, 1, 1),
        0,
        &[
            Arg::Ptr(x.ptr),
            Arg::I32(x.cols as i32),
            Arg::I32(ld as i32),
            Arg::Ptr(ptr),
            Arg::U64(groups as u64),
        ],
        (ptr, bytes),
    );
    if scratch.is_none() {
        b.gemm.step().cached = Some(key);
    }
    (ptr, scratch)
}

/// One cuBLAS call: out[t][r0 + i] = Σ_k wb[i][k] · xb[t][k] for i < m, t < n.
#[allow(clippy::too_many_arguments)]
fn gemm(
    b: &CudaBackend,
    wb: u64,
    xb: u64,
    ld: usize,
    k: usize,
    m: usize,
    n: usize,
    out: u64,
    ldc: usize,
    ws: (u64, usize),
) {
    let blas = b
        .gemm
        .blas
        .as_ref()
        .expect("cuBLAS is open")
        .lock()
        .expect("cublas lock");
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: `wb` holds m rows of `ld` bf16, `xb` n rows of `ld` bf16, `out` n rows of `ldc`
    // f32 (the columns r0.. of the caller's output), `ws` a device buffer of `ws.1` bytes; all
    // stream-ordered on the handle's stream. alpha/beta are host scalars read at the call.
    unsafe {
        bsys::cublasSetWorkspace_v2(blas.0, ws.0 as *mut std::ffi::c_void, ws.1)
            .result()
            .unwrap_or_else(|e| panic!("cublasSetWorkspace: {e:?}"));
        blas::gemm_ex(
            blas.0,
            bsys::cublasOperation_t::CUBLAS_OP_T,
            bsys::cublasOperation_t::CUBLAS_OP_N,
            m as i32,
            n as i32,
            k as i32,
            &alpha as *const f32 as *const std::ffi::c_void,
            wb as *const std::ffi::c_void,
            bsys::cudaDataType::CUDA_R_16BF,
            ld as i32,
            xb as *const std::ffi::c_void,
            bsys::cudaDataType::CUDA_R_16BF,
            ld as i32,
            &beta as *const f32 as *const std::ffi::c_void,
            out as *mut std::ffi::c_void,
            bsys::cudaDataType::CUDA_R_32F,
            ldc as i32,
            bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .unwrap_or_else(|e| panic!("cublasGemmEx ({m}×{n}×{k}): {e:?}"));
}

/// The GEMM path of `matmul` (shapes already checked there).
pub fn matmul(b: &CudaBackend, w: &CudaWeight, x: &CudaTensor, out: &mut CudaTensor) {
    b.bind();
    let (n, ld) = (x.rows, ld(w.cols));
    let (xb, _xscratch) = bf16_input(b, x);
    let step_ws = b.gemm.step().ws.as_ref().map(|t| t.ptr);
    let _ws_scratch;
    let ws = match step_ws {
        Some(p) => p,
        None => {
            let t = b.scratch(WORKSPACE_BYTES);
            let p = t.ptr;
            _ws_scratch = t;
            p
        }
    };
    let ws = (ws, WORKSPACE_BYTES);
    b.wrote(out.ptr, out.len() * 4);
    if let Some(c) = w.bf16.get() {
        gemm(b, c.ptr, xb, ld, w.cols, w.rows, n, out.ptr, w.rows, ws);
        return;
    }
    let chunk = (CHUNK_BYTES / (2 * ld)).max(128).min(w.rows);
    let scratch = b.scratch(chunk * ld * 2);
    for r0 in (0..w.rows).step_by(chunk) {
        let m = chunk.min(w.rows - r0);
        dequantize(b, w, r0, m, scratch.ptr);
        gemm(
            b,
            scratch.ptr,
            xb,
            ld,
            w.cols,
            m,
            n,
            out.ptr + (r0 * 4) as u64,
            w.rows,
            ws,
        );
    }
}

/// Dequantize a whole weight to host bf16 bits with the GPU kernel (`rows × ld(cols)`), for
/// tests.
pub fn dequantize_to_host(b: &CudaBackend, w: &CudaWeight) -> Vec<u16> {
    use kestrel_engine::Backend;
    let ld = ld(w.cols);
    let mut t = b.scratch(w.rows * ld * 2);
    b.fill(&mut t, f32::NAN);
    dequantize(b, w, 0, w.rows, t.ptr);
    b.read(&t)
        .iter()
        .flat_map(|f| {
            let u = f.to_bits();
            [u as u16, (u >> 16) as u16]
        })
        .take(w.rows * ld)
        .collect()
}

/// What `cache_weights` did.
#[derive(Clone, Debug, Default)]
pub struct WeightCacheReport {
    /// Matrices with a bf16 copy now, and their bytes.
    pub cached: usize,
    pub cached_bytes: usize,
    /// Matrices offered, and the bytes all their copies would take.
    pub offered: usize,
    pub offered_bytes: usize,
    /// Why nothing was cached, when nothing was.
    pub skipped: Option<String>,
}

impl std::fmt::Display for WeightCacheReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        if let Some(why) = &self.skipped {
            return write!(f, "bf16 weight cache off ({why})");
        }
        write!(
            f,
            "bf16 weight cache: {:.2} GiB, {} of {} layer matrices ({:.0}% of their {:.2} GiB)",
            gib(self.cached_bytes),
            self.cached,
            self.offered,
            100.0 * self.cached_bytes as f64 / self.offered_bytes.max(1) as f64,
            gib(self.offered_bytes)
        )
    }
}

impl CudaBackend {
    /// Whether the GEMM path is available (cuBLAS loaded), or why not.
    pub fn gemm_available(&self) -> Result<(), String> {
        match &self.gemm.blas {
            Some(_) => Ok(()),
            None => Err(self.gemm.why_not.clone().unwrap_or_default()),
        }
    }

    pub fn gemm_rows(&self) -> GemmRows {
        *self.gemm.rows.lock().expect("gemm rows lock")
    }

    /// Set the row counts from which matmuls take the GEMM path (tests and reports).
    pub fn set_gemm_rows(&self, rows: GemmRows) {
        *self.gemm.rows.lock().expect("gemm rows lock") = rows;
    }

    /// Make resident bf16 copies of `weights` (the model's layer matrices), largest first, as
    /// long as free device memory stays above `reserve` bytes (room for the activation arena
    /// and scratch; KV pools are allocated before this is called). Weights that already have a
    /// copy, or that the GEMM path does not take, are skipped.
    pub fn cache_weights(&self, weights: &[&CudaWeight], reserve: usize) -> WeightCacheReport {
        let mut rep = WeightCacheReport::default();
        if let Err(why) = self.gemm_available() {
            rep.skipped = Some(why);
            return rep;
        }
        let mut todo: Vec<&CudaWeight> = weights
            .iter()
            .copied()
            .filter(|w| w.rows > 1 && supports(w.ty))
            .collect();
        let bytes = |w: &CudaWeight| w.rows * ld(w.cols) * 2;
        rep.offered = todo.len();
        rep.offered_bytes = todo.iter().map(|w| bytes(w)).sum();
        todo.sort_by_key(|w| std::cmp::Reverse(bytes(w)));
        self.bind();
        self.synchronize();
        let free = match cudarc::driver::result::mem_get_info() {
            Ok((free, _)) => free,
            Err(e) => {
                rep.skipped = Some(format!("cuMemGetInfo: {e:?}"));
                return rep;
            }
        };
        let mut budget = free.saturating_sub(reserve);
        for w in todo {
            if w.bf16.get().is_some() {
                rep.cached += 1;
                rep.cached_bytes += bytes(w);
                continue;
            }
            let n = bytes(w);
            if n > budget {
                continue;
            }
            // SAFETY: u8 has no invalid bit patterns; the kernel writes every byte below.
            let Ok(buf) = (unsafe { self.stream.alloc::<u8>(n) }) else {
                continue;
            };
            let ptr = {
                let (p, _sync) = buf.device_ptr(&self.stream);
                p
            };
            dequantize(self, w, 0, w.rows, ptr);
            if w.bf16.set(Bf16Weight { _buf: buf, ptr }).is_ok() {
                budget -= n;
                rep.cached += 1;
                rep.cached_bytes += n;
            }
        }
        self.synchronize();
        if rep.cached == 0 && rep.offered > 0 {
            rep.skipped = Some(format!(
                "{:.2} GiB free, {:.2} GiB kept in reserve",
                free as f64 / (1u64 << 30) as f64,
                reserve as f64 / (1u64 << 30) as f64
            ));
        }
        rep
    }

    /// Free device memory minus what `cache_weights` should leave (and what `upload_table`
    /// leaves before it keeps a table on the device): the larger of 2 GiB and 5% of the card
    /// (activation arena at large ubatches, scratch, cuBLAS, the driver's own).
    pub fn default_cache_reserve(&self) -> usize {
        let total = cudarc::driver::result::mem_get_info().map_or(0, |(_, t)| t);
        (2usize << 30).max(total / 20)
    }
}
