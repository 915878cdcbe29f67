//! `Backend` for NVIDIA GPUs: device context, kernel modules, weights, the activation arena and
//! the per-step metadata buffer. Ops launch kernels from `ops/`; this file holds the plumbing.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{result as cu, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr};
use cudarc::nvrtc::Ptx;
use kestrel_engine::{AttnGeom, Backend, StepInfo, WeightRef};
use kestrel_gguf::GgmlType;
use kestrel_model::{FfnKind, RopeSpec};

use crate::arena::{AllocId, Arena};
use crate::kernels::MODULES;
use crate::nvrtc;

/// Initial activation arena size; it grows between steps as needed (see `arena.rs`).
const INITIAL_ARENA: usize = 64 << 20;

/// Whether the CUDA driver library (libcuda) can be loaded.
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

pub struct CudaBackend {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    arena: Arc<Mutex<Arena>>,
    step_buf: Mutex<StepBuf>,
    device_name: String,
    arch: String,
}

struct StepBuf {
    dev: Option<CudaSlice<u32>>,
    ptr: u64,
    cap: usize,
    host: Vec<u32>,
}

/// A weight on the device: 2-D tensors in their GGUF block format; 1-D tensors (norms, biases,
/// scales, RoPE factors) decoded to f32 at upload, as the CPU backend does.
pub struct CudaWeight {
    _buf: CudaSlice<u8>,
    pub(crate) ptr: u64,
    /// Storage type on the device (F32 for decoded 1-D tensors).
    pub(crate) ty: GgmlType,
    pub(crate) cols: usize,
    pub(crate) rows: usize,
    pub(crate) row_bytes: usize,
}

impl CudaWeight {
    pub fn ty(&self) -> GgmlType {
        self.ty
    }
}

/// A row-major f32 matrix in the activation arena (freed back to it on drop).
pub struct CudaTensor {
    pub(crate) ptr: u64,
    pub rows: usize,
    pub cols: usize,
    id: AllocId,
    arena: Arc<Mutex<Arena>>,
}

impl CudaTensor {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
}

impl Drop for CudaTensor {
    fn drop(&mut self) {
        if let Ok(mut a) = self.arena.lock() {
            a.free(self.id);
        }
    }
}

/// One layer's K and V pools: `n_slots` rows of `kv_dim` f16 values each.
pub struct CudaKv {
    _k: CudaSlice<u16>,
    _v: CudaSlice<u16>,
    pub(crate) k: u64,
    pub(crate) v: u64,
    pub(crate) kv_dim: usize,
    pub(crate) n_slots: usize,
}

/// The step's metadata in the step buffer (device addresses of each u32 array).
#[derive(Clone, Debug)]
pub struct CudaStep {
    pub n_tokens: usize,
    pub n_logits: usize,
    pub(crate) tokens: u64,
    pub(crate) positions: u64,
    pub(crate) slots: u64,
    pub(crate) seq_index: u64,
    pub(crate) bt_off: u64,
    pub(crate) bt_flat: u64,
    pub(crate) logit_rows: u64,
}

/// A kernel argument; every kind travels in an 8-byte slot (the driver reads the parameter's
/// own size from its start, little-endian).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    Ptr(u64),
    U64(u64),
    I32(i32),
    F32(f32),
}

/// Blocks for a grid-stride loop over `n` items with `threads` per block.
pub(crate) fn grid_for(n: usize, threads: u32) -> u32 {
    (n.div_ceil(threads as usize)).clamp(1, 8192) as u32
}

fn slice_ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

impl CudaBackend {
    /// Open GPU `ordinal`, and load (or compile with NVRTC and cache) every kernel for its
    /// architecture. Errors say plainly when no driver, no GPU or no NVRTC is there.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_available() {
            bail!("no NVIDIA driver found (libcuda.so could not be loaded)");
        }
        let n = CudaContext::device_count().map_err(|e| anyhow!("CUDA driver: {e:?}"))?;
        if n <= 0 {
            bail!("no CUDA device found");
        }
        if ordinal >= n as usize {
            bail!("CUDA device {ordinal} requested, but only {n} present");
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| anyhow!("opening CUDA device {ordinal}: {e:?}"))?;
        // Raw device addresses are passed to kernels; one stream orders all work.
        // SAFETY: this backend uses a single stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| anyhow!("creating a CUDA stream: {e:?}"))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| anyhow!("{e:?}"))?;
        if (major, minor) < (6, 1) {
            bail!("CUDA device {ordinal} is sm_{major}{minor}; Kestrel's kernels need sm_61 or newer (dp4a)");
        }
        let arch = format!("sm_{major}{minor}");
        let device_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let mut funcs = HashMap::new();
        for m in MODULES {
            let module = load_module(&ctx, m, &arch)?;
            for &f in m.functions {
                let func = module
                    .load_function(f)
                    .map_err(|e| anyhow!("kernel {f} missing from module {}: {e:?}", m.name))?;
                funcs.insert(f, func);
            }
        }
        let mut arena = Arena::new(stream.clone());
        arena
            .reserve(INITIAL_ARENA)
            .context("allocating the activation arena")?;
        Ok(CudaBackend {
            ctx,
            stream,
            funcs,
            arena: Arc::new(Mutex::new(arena)),
            step_buf: Mutex::new(StepBuf {
                dev: None,
                ptr: 0,
                cap: 0,
                host: Vec::new(),
            }),
            device_name,
            arch,
        })
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// `sm_XY` of the device (the kernels' NVRTC target).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Grow the activation arena to at least `bytes` now (between steps), instead of lazily.
    pub fn reserve_activations(&self, bytes: usize) -> Result<()> {
        self.arena.lock().expect("arena lock").reserve(bytes)
    }

    /// Current activation arena size and the last step's peak use, in bytes.
    pub fn arena_usage(&self) -> (usize, usize) {
        let a = self.arena.lock().expect("arena lock");
        (a.capacity(), a.peak())
    }

    pub(crate) fn func(&self, name: &str) -> &CudaFunction {
        self.funcs
            .get(name)
            .unwrap_or_else(|| panic!("kernel {name} is not loaded"))
    }

    /// Launch a kernel on the backend's stream; a launch error is a bug or a lost device, and
    /// panics like any other op failure.
    pub(crate) fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[Arg],
    ) {
        let f = self.func(name);
        let mut slots: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) | Arg::U64(p) => p,
                Arg::I32(i) => i as u32 as u64,
                Arg::F32(x) => x.to_bits() as u64,
            })
            .collect();
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        self.bind();
        // SAFETY: `params` points at one slot per kernel parameter, in order, alive for the call;
        // the launchers in `ops/` pass arguments matching each kernel's signature.
        unsafe {
            cu::launch_kernel(
                f.cu_function(),
                grid,
                block,
                smem,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .unwrap_or_else(|e| panic!("launching kernel {name}: {e:?}"));
    }

    fn bind(&self) {
        self.ctx
            .bind_to_thread()
            .unwrap_or_else(|e| panic!("binding the CUDA context: {e:?}"));
    }

    /// Wait for all queued work; panics with the device's error if a kernel failed.
    pub fn synchronize(&self) {
        self.stream
            .synchronize()
            .unwrap_or_else(|e| panic!("CUDA stream failed: {e:?}"));
    }

    /// Raw scratch memory from the arena (bytes), freed when the returned tensor drops.
    pub(crate) fn scratch(&self, bytes: usize) -> CudaTensor {
        let floats = bytes.div_ceil(4);
        self.alloc(1, floats)
    }

    /// Copy host values into a tensor (tests, and host-built inputs).
    pub fn write(&self, t: &mut CudaTensor, data: &[f32]) {
        assert_eq!(
            data.len(),
            t.len(),
            "write: {} values into a {}×{} tensor",
            data.len(),
            t.rows,
            t.cols
        );
        self.bind();
        // SAFETY: `t` owns `t.len()` f32s at `t.ptr`; the copy is ordered on the stream and
        // synchronised before `data` may go away.
        unsafe { cu::memcpy_htod_async(t.ptr, data, self.stream.cu_stream()) }
            .expect("host-to-device copy");
        self.synchronize();
    }

    /// Set every value of a tensor (tests poison outputs with NaN).
    pub fn fill(&self, t: &mut CudaTensor, v: f32) {
        let n = t.len();
        self.launch(
            "fill",
            (grid_for(n, 256), 1, 1),
            (256, 1, 1),
            0,
            &[Arg::Ptr(t.ptr), Arg::F32(v), Arg::U64(n as u64)],
        );
    }

    /// Read a KV pool back (K, V as f16 bits).
    pub fn read_kv(&self, kv: &CudaKv) -> (Vec<u16>, Vec<u16>) {
        let n = kv.n_slots * kv.kv_dim;
        let (mut k, mut v) = (vec![0u16; n], vec![0u16; n]);
        self.synchronize();
        // SAFETY: each pool holds `n` u16s; the stream is idle.
        unsafe {
            cu::memcpy_dtoh_sync(&mut k, kv.k).expect("device-to-host copy");
            cu::memcpy_dtoh_sync(&mut v, kv.v).expect("device-to-host copy");
        }
        (k, v)
    }
}

fn load_module(
    ctx: &Arc<CudaContext>,
    m: &crate::kernels::KernelModule,
    arch: &str,
) -> Result<Arc<cudarc::driver::CudaModule>> {
    let (cubin, cached) = nvrtc::cubin(m, arch)
        .with_context(|| format!("building kernels/{}.cu for {arch}", m.name))?;
    match ctx.load_module(Ptx::from_binary(cubin)) {
        Ok(module) => Ok(module),
        Err(e) if cached => {
            // A stale or damaged cache entry: compile afresh.
            nvrtc::evict(m, arch);
            let cubin = nvrtc::compile_cubin(m, arch)
                .with_context(|| format!("building kernels/{}.cu for {arch}", m.name))?;
            ctx.load_module(Ptx::from_binary(cubin)).map_err(|e2| {
                anyhow!(
                    "loading kernels/{}.cu for {arch}: {e2:?} (cached copy: {e:?})",
                    m.name
                )
            })
        }
        Err(e) => Err(anyhow!("loading kernels/{}.cu for {arch}: {e:?}", m.name)),
    }
}

/// Weight types `matmul` supports (the CPU backend's set).
pub fn supports_matmul(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K
    )
}

impl Backend for CudaBackend {
    type Weight = CudaWeight;
    type Tensor = CudaTensor;
    type Kv = CudaKv;
    type Step = CudaStep;

    fn name(&self) -> String {
        format!("CUDA ({}, {})", self.device_name, self.arch)
    }

    fn upload(&self, w: WeightRef) -> Result<CudaWeight> {
        let cols = w.shape.first().copied().unwrap_or(1) as usize;
        let rows = w.shape.get(1..).map_or(1, |s| s.iter().product::<u64>()) as usize;
        self.bind();
        let (bytes, ty): (std::borrow::Cow<[u8]>, GgmlType) = if w.shape.len() == 1 {
            let mut v = vec![0f32; cols];
            kestrel_gguf::quant::dequantize(w.ty, w.data(), &mut v)
                .map_err(|e| anyhow!("cannot decode {}: {e}", w.name))?;
            (
                v.iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<u8>>()
                    .into(),
                GgmlType::F32,
            )
        } else {
            if !supports_matmul(w.ty) {
                bail!("weight type {} is not supported by the CUDA backend", w.ty);
            }
            (w.data().into(), w.ty)
        };
        let row_bytes = ty
            .row_bytes(cols as u64)
            .ok_or_else(|| anyhow!("{}: {cols} columns are not whole {} blocks", w.name, ty))?
            as usize;
        if bytes.len() < row_bytes * rows {
            bail!(
                "{}: {} bytes, {rows} rows of {row_bytes} expected",
                w.name,
                bytes.len()
            );
        }
        let buf = self
            .stream
            .clone_htod(&bytes[..])
            .map_err(|e| anyhow!("uploading {} ({} bytes): {e:?}", w.name, bytes.len()))?;
        let ptr = slice_ptr(&buf, &self.stream);
        Ok(CudaWeight {
            _buf: buf,
            ptr,
            ty,
            cols,
            rows,
            row_bytes,
        })
    }

    fn alloc(&self, rows: usize, cols: usize) -> CudaTensor {
        let (ptr, id) = self
            .arena
            .lock()
            .expect("arena lock")
            .alloc(rows * cols * 4)
            .unwrap_or_else(|e| panic!("out of GPU memory for a {rows}×{cols} activation: {e:#}"));
        CudaTensor {
            ptr,
            rows,
            cols,
            id,
            arena: self.arena.clone(),
        }
    }

    fn alloc_kv(&self, n_slots: usize, kv_dim: usize) -> Result<CudaKv> {
        let n = n_slots * kv_dim;
        let alloc = || {
            self.stream.alloc_zeros::<u16>(n).map_err(|e| {
                anyhow!(
                    "allocating a KV pool of {n_slots} slots × {kv_dim} ({} MiB): {e:?}",
                    (n * 2) >> 20
                )
            })
        };
        let (k, v) = (alloc()?, alloc()?);
        Ok(CudaKv {
            k: slice_ptr(&k, &self.stream),
            v: slice_ptr(&v, &self.stream),
            _k: k,
            _v: v,
            kv_dim,
            n_slots,
        })
    }

    fn begin_step(&self, step: &StepInfo) -> CudaStep {
        self.bind();
        self.arena
            .lock()
            .expect("arena lock")
            .reset()
            .unwrap_or_else(|e| panic!("growing the activation arena: {e:#}"));
        let mut sb = self.step_buf.lock().expect("step buffer lock");
        let n = step.tokens.len();
        // Layout: tokens, positions, slots, seq_index [n each], block-table offsets [n_seq + 1],
        // flattened block tables, logit rows.
        let host = &mut sb.host;
        host.clear();
        host.extend_from_slice(&step.tokens);
        host.extend_from_slice(&step.positions);
        host.extend_from_slice(&step.slots);
        host.extend_from_slice(&step.seq_index);
        let mut off = 0u32;
        for bt in &step.block_tables {
            host.push(off);
            off += bt.len() as u32;
        }
        host.push(off);
        for bt in &step.block_tables {
            host.extend_from_slice(bt);
        }
        host.extend_from_slice(&step.logit_rows);
        let len = host.len().max(1);
        if len > sb.cap {
            let cap = len.next_power_of_two().max(4096);
            self.synchronize();
            sb.dev = None;
            let dev = self
                .stream
                .alloc_zeros::<u32>(cap)
                .unwrap_or_else(|e| panic!("allocating the step buffer: {e:?}"));
            sb.ptr = slice_ptr(&dev, &self.stream);
            sb.dev = Some(dev);
            sb.cap = cap;
        }
        if !sb.host.is_empty() {
            // SAFETY: the step buffer holds `cap >= host.len()` u32s. A pageable source is staged
            // by the driver before the call returns, so `host` may be reused afterwards.
            unsafe { cu::memcpy_htod_async(sb.ptr, &sb.host[..], self.stream.cu_stream()) }
                .unwrap_or_else(|e| panic!("uploading the step: {e:?}"));
        }
        let at = |k: usize| sb.ptr + 4 * k as u64;
        let n_seq = step.block_tables.len();
        let flat = 4 * n + n_seq + 1;
        let total_bt: usize = step.block_tables.iter().map(Vec::len).sum();
        CudaStep {
            n_tokens: n,
            n_logits: step.logit_rows.len(),
            tokens: at(0),
            positions: at(n),
            slots: at(2 * n),
            seq_index: at(3 * n),
            bt_off: at(4 * n),
            bt_flat: at(flat),
            logit_rows: at(flat + total_bt),
        }
    }

    fn embed(&self, table: &CudaWeight, step: &CudaStep, scale: f32, out: &mut CudaTensor) {
        crate::ops::embed::embed(self, table, step, scale, out)
    }

    fn rms_norm(
        &self,
        x: &CudaTensor,
        w: Option<&CudaWeight>,
        width: usize,
        eps: f32,
        out: &mut CudaTensor,
    ) {
        crate::ops::norm::rms_norm(self, x, w, width, eps, out)
    }

    fn matmul(&self, w: &CudaWeight, x: &CudaTensor, out: &mut CudaTensor) {
        crate::ops::matmul::matmul(self, w, x, out)
    }

    fn add_bias(&self, x: &mut CudaTensor, bias: &CudaWeight) {
        crate::ops::elementwise::add_bias(self, x, bias)
    }

    fn rope(
        &self,
        x: &mut CudaTensor,
        head_dim: usize,
        rope: &RopeSpec,
        factors: Option<&CudaWeight>,
        step: &CudaStep,
    ) {
        crate::ops::rope::rope(self, x, head_dim, rope, factors, step)
    }

    fn kv_write(&self, k: &CudaTensor, v: &CudaTensor, kv: &mut CudaKv, step: &CudaStep) {
        crate::ops::attention::kv_write(self, k, v, kv, step)
    }

    fn attention(
        &self,
        q: &CudaTensor,
        kv: &CudaKv,
        geom: AttnGeom,
        step: &CudaStep,
        out: &mut CudaTensor,
    ) {
        crate::ops::attention::attention(self, q, kv, geom, step, out)
    }

    fn gated_act(&self, gate: &mut CudaTensor, up: &CudaTensor, kind: FfnKind) {
        crate::ops::act::gated_act(self, gate, up, kind)
    }

    fn add(&self, x: &mut CudaTensor, y: &CudaTensor) {
        crate::ops::elementwise::add(self, x, y)
    }

    fn scale_by(&self, x: &mut CudaTensor, s: &CudaWeight) {
        crate::ops::elementwise::scale_by(self, x, s)
    }

    fn scale(&self, x: &mut CudaTensor, c: f32) {
        crate::ops::elementwise::scale(self, x, c)
    }

    fn copy_cols(&self, src: &CudaTensor, col0: usize, out: &mut CudaTensor) {
        crate::ops::elementwise::copy_cols(self, src, col0, out)
    }

    fn gather_logit_rows(&self, x: &CudaTensor, step: &CudaStep, out: &mut CudaTensor) {
        crate::ops::elementwise::gather_logit_rows(self, x, step, out)
    }

    fn softcap(&self, x: &mut CudaTensor, cap: f32) {
        crate::ops::elementwise::softcap(self, x, cap)
    }

    fn copy(&self, src: &CudaTensor, dst: &mut CudaTensor) {
        assert_eq!(
            src.len(),
            dst.len(),
            "copy: {} values into {}",
            src.len(),
            dst.len()
        );
        if src.is_empty() {
            return;
        }
        self.bind();
        // SAFETY: both tensors hold `len` f32s; stream-ordered.
        unsafe { cu::memcpy_dtod_async(dst.ptr, src.ptr, src.len() * 4, self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("device copy: {e:?}"));
    }

    fn read(&self, x: &CudaTensor) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        self.synchronize();
        if !out.is_empty() {
            // SAFETY: `x` holds `len` f32s; the stream is idle.
            unsafe { cu::memcpy_dtoh_sync(&mut out, x.ptr) }
                .unwrap_or_else(|e| panic!("device-to-host copy: {e:?}"));
        }
        out
    }
}
