//! `Backend` for NVIDIA GPUs: device context, kernel modules, weights, the activation arena,
//! the per-step metadata buffer, the quantized-input cache and the step CUDA graphs. Ops
//! launch kernels from `ops/`; this file holds the plumbing.
//!
//! CUDA graphs (`GraphMode`, `KESTREL_CUDA_GRAPHS`): `Engine::step` pads a decode-only step to a
//! batch-size bucket (`GRAPH_BUCKETS`), and a one-chunk prefill step to a token-count bucket
//! (`PREFILL_GRAPH_BUCKETS`), and asks for a replay. The backend keys graphs by (bucket,
//! attention split count): with those fixed, every kernel argument of the step is fixed too —
//! activations come from the arena at the same addresses step after step, and what changes
//! (tokens, positions, KV slots, block tables, logit rows, the prefill run) sits in the step
//! buffer at fixed offsets; the prefill attention kernel finds each tile's keys from the
//! positions there. A key runs eagerly once (sizing the arena), is recorded (stream capture)
//! the next time and replayed after that with no parameter updates. Graphs are dropped when the
//! arena or the step buffer moves.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{
    result as cu, sys, CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr,
};
use cudarc::nvrtc::Ptx;
use kestrel_engine::{AttnGeom, Backend, Chunk, GraphBucket, StepInfo, WeightRef};
use kestrel_gguf::GgmlType;
use kestrel_model::{FfnKind, RopeSpec};

use crate::arena::{AllocId, Arena};
use crate::kernels::MODULES;
use crate::nvrtc;
use crate::ops::matmul::{ActFmt, ActLayout};
use crate::table::{HostTable, TablePlacement, TableReport};

/// Initial activation arena size; it grows between steps as needed (see `arena.rs`).
const INITIAL_ARENA: usize = 64 << 20;

/// Whether the CUDA driver library (libcuda) can be loaded.
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Batch sizes decode steps are padded to and replayed at.
pub const GRAPH_BUCKETS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// Token counts one-chunk prefill steps are padded to and replayed at: every multiple of 16 up
/// to 512. A replay saves 0.4-0.8 ms of launch overhead per step on the H200, 3-27% of a chunk
/// of 32-512 tokens and under 3% of a 2048-token one (docs/benchmarks/cuda-prefill.md, "Prefill
/// graphs"); 16 tokens of padding cost at most ~0.6 ms (qwen3-8b, 512 tokens), so buckets
/// are that fine.
pub const PREFILL_GRAPH_BUCKETS: [usize; 32] = {
    let mut b = [0; 32];
    let mut i = 0;
    while i < 32 {
        b[i] = 16 * (i + 1);
        i += 1;
    }
    b
};

/// Step CUDA graphs. `KESTREL_CUDA_GRAPHS=0` gives `Off`, `pad` gives `Pad`; the default
/// is `On`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphMode {
    /// Every step runs eagerly, unpadded.
    Off,
    /// Decode and prefill steps are padded to the buckets but run eagerly (what `On` must
    /// match bit for bit).
    Pad,
    /// Padded steps are recorded once per key and replayed.
    On,
}

pub struct CudaBackend {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    arena: Arc<Mutex<Arena>>,
    step_buf: Mutex<StepBuf>,
    state: Mutex<State>,
    graphs: Mutex<Graphs>,
    /// 16-byte matvec kernels, with Q6_K/Q8_0/Q4_0 rows repacked at upload
    /// (`KESTREL_CUDA_FAST_MATVEC=0` turns them off).
    fast_matvec: bool,
    /// Launch with programmatic dependent launch (sm_90+; `KESTREL_CUDA_PDL=0` turns it off):
    /// each kernel may start while its predecessor runs, up to its `PDL_WAIT` (common.cuh).
    pdl: bool,
    /// Overrides of the 16-byte matvecs' launch shape (`KESTREL_CUDA_MV_G` threads per row,
    /// `KESTREL_CUDA_MV_R` rows per thread group; tests and benchmarks), else chosen per
    /// weight and token count (ops/matmul.rs `MvShape`).
    mv_tune: Mutex<crate::ops::matmul::MvTune>,
    /// The many-rows matmul path: cuBLAS, thresholds, the step's bf16 input (ops/gemm.rs).
    pub(crate) gemm: crate::ops::gemm::GemmState,
    /// Runs of at least this many consecutive query tokens of one sequence take the prefill
    /// attention kernel (`KESTREL_CUDA_PREFILL_MIN`; `off` never); shorter runs the decode one.
    prefill_min: Mutex<usize>,
    /// Which of a head dim's prefill kernel configurations runs (None: chosen per step by grid
    /// size; tests and benchmarks force one).
    prefill_variant: Mutex<Option<usize>>,
    /// Multiprocessors on the device.
    sm_count: usize,
    /// Shared memory a block may opt in to (bytes): which prefill kernels fit on the device.
    smem_optin: usize,
    fd_tune: Mutex<crate::ops::attention::FdTune>,
    /// Run matmuls that share an input (q/k/v, gate/up) as one launch where they can
    /// (`KESTREL_CUDA_FUSE=0` turns it off).
    fuse_matmuls: bool,
    device_name: String,
    arch: String,
    /// Where `upload_table` puts tables, and what it decided for each.
    table_placement: Mutex<TablePlacement>,
    tables: Mutex<Vec<TableReport>>,
}

/// Mutable per-step state besides the arena: the quantized-input cache.
struct State {
    /// Arena buffer for quantized matmul inputs, allocated first at each `begin_step` (so its
    /// address is stable), `qbuf_bytes` long.
    qbuf: Option<CudaTensor>,
    qbuf_bytes: usize,
    /// The input whose 8-bit blocks `qbuf` holds.
    cached: Option<Quantized>,
    /// The activation format the last quantized matmul read (what producers quantize to).
    pref: Option<ActFmt>,
    /// Most columns of any uploaded matrix (sizes `qbuf`).
    max_cols: usize,
    /// The step in flight: tokens and the fewest and most keys any of its tokens attends to.
    n_tokens: usize,
    min_keys: usize,
    max_keys: usize,
    /// Output of `argmax_rows`.
    ids: Option<CudaSlice<u32>>,
    stats: QuantStats,
    /// Whether norms and activations write the next matmul's blocks (tests turn it off).
    producers: bool,
}

/// How matmul inputs got their 8-bit blocks (counts since the backend was made).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuantStats {
    /// Quantize launches.
    pub quantized: usize,
    /// Matmuls that found their input's blocks already made.
    pub reused: usize,
    /// Blocks written by the producer of the input (norm, gated activation).
    pub produced: usize,
}

/// An input quantized into `qbuf`: `rows × cols` values at `src`, in `fmt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Quantized {
    src: u64,
    rows: usize,
    cols: usize,
    fmt: ActFmt,
}

/// 8-bit blocks of a matmul input, ready for a matvec.
pub(crate) struct QInput {
    pub(crate) base: u64,
    pub(crate) lay: ActLayout,
    /// Scratch holding the blocks when they did not go to `qbuf`.
    _scratch: Option<CudaTensor>,
}

/// A graph's key: (bucket, `ops::attention::launch_key`).
type GraphKey = (GraphBucket, usize);

struct Recorded {
    graph: CudaGraph,
    out: u64,
    rows: usize,
    cols: usize,
}

struct Graphs {
    mode: GraphMode,
    /// (arena epoch, step buffer epoch) the recorded graphs' addresses belong to.
    epoch: (u64, u64),
    recorded: HashMap<GraphKey, Recorded>,
    /// Arena bytes each key's step used when it last ran eagerly.
    peak: HashMap<GraphKey, usize>,
    /// The key of the step in flight and whether it is being recorded.
    current: Option<(GraphKey, bool)>,
    recordings: usize,
    replays: usize,
}

struct StepBuf {
    dev: Option<CudaSlice<u32>>,
    ptr: u64,
    cap: usize,
    host: Vec<u32>,
    /// Bumped whenever the buffer moves.
    epoch: u64,
}

/// A weight on the device: 2-D tensors in their GGUF block format; 1-D tensors (norms, biases,
/// scales, RoPE factors) decoded to f32 at upload, as the CPU backend does.
pub struct CudaWeight {
    mem: WeightMem,
    pub(crate) ptr: u64,
    /// Storage type on the device (F32 for decoded 1-D tensors).
    pub(crate) ty: GgmlType,
    pub(crate) cols: usize,
    pub(crate) rows: usize,
    /// Bytes from one row to the next on the device.
    pub(crate) row_bytes: usize,
    /// Rows in the 16-byte kernels' layout (ops/matmul.rs `repack`), not GGUF's.
    pub(crate) repacked: bool,
    /// A resident bf16 copy for the GEMM path (`CudaBackend::cache_weights`).
    pub(crate) bf16: std::sync::OnceLock<crate::ops::gemm::Bf16Weight>,
}

/// What holds a weight's bytes (kept only to free them with it).
enum WeightMem {
    Device {
        _buf: CudaSlice<u8>,
    },
    /// A table `upload_table` left in mapped host memory; `ptr` is its device address.
    Host {
        _table: HostTable,
    },
}

impl CudaWeight {
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Whether the device reads this weight from host memory over PCIe (`upload_table`).
    pub fn in_host_memory(&self) -> bool {
        matches!(self.mem, WeightMem::Host { .. })
    }

    /// The type id kernels decode rows by (dequant.cuh: repacked rows have their own).
    pub(crate) fn kernel_type(&self) -> i32 {
        self.ty.id() as i32 | if self.repacked { 0x100 } else { 0 }
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
    /// A view of arena memory that something else owns (a recorded graph's output).
    fn alias(ptr: u64, rows: usize, cols: usize, arena: &Arc<Mutex<Arena>>) -> Self {
        CudaTensor {
            ptr,
            rows,
            cols,
            id: AllocId::detached(),
            arena: arena.clone(),
        }
    }

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
    /// The most keys any token of the step attends to (its position + 1).
    pub max_keys: usize,
    /// The fewest.
    pub min_keys: usize,
    pub(crate) tokens: u64,
    pub(crate) positions: u64,
    pub(crate) slots: u64,
    pub(crate) seq_index: u64,
    pub(crate) bt_off: u64,
    pub(crate) bt_flat: u64,
    pub(crate) logit_rows: u64,
    /// Prefill runs (first token, count) for the prefill attention kernel, and their counts on
    /// the host (to size its grid); empty when no run is long enough.
    pub(crate) prefill_runs: u64,
    pub prefill_lens: Vec<u32>,
    /// The tokens left to the decode attention kernel: `n_decode` indices at `decode_rows`, or
    /// every token (`decode_rows` 0) when the step has no prefill run.
    pub(crate) decode_rows: u64,
    pub n_decode: usize,
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
        let smem_optin = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(|e| anyhow!("{e:?}"))? as usize;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| anyhow!("{e:?}"))? as usize;
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
        // The prefill attention kernels take their tiles in dynamic shared memory, above the
        // 48 KiB a launch gets without opting in.
        for c in crate::ops::attention::PREFILL_CFGS {
            let (name, bytes) = (c.name, c.smem());
            if bytes + crate::ops::attention::PREFILL_STATIC_SMEM <= smem_optin {
                funcs[name]
                    .set_attribute(
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        bytes as i32,
                    )
                    .map_err(|e| anyhow!("{name}: shared memory limit: {e:?}"))?;
            }
        }
        // So do the tensor-core flash-decoding kernels' K/V pipelines.
        for (name, bytes) in crate::ops::attention::fdt_kernels() {
            if bytes + crate::ops::attention::FDT_STATIC_SMEM <= smem_optin {
                funcs[name]
                    .set_attribute(
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        bytes as i32,
                    )
                    .map_err(|e| anyhow!("{name}: shared memory limit: {e:?}"))?;
            }
        }
        let mut arena = Arena::new(stream.clone());
        arena
            .reserve(INITIAL_ARENA)
            .context("allocating the activation arena")?;
        let env = |k: &str| std::env::var(k).unwrap_or_default();
        let mode = match env("KESTREL_CUDA_GRAPHS").as_str() {
            "0" | "off" | "false" => GraphMode::Off,
            "pad" => GraphMode::Pad,
            _ => GraphMode::On,
        };
        let fast_matvec = !matches!(
            env("KESTREL_CUDA_FAST_MATVEC").as_str(),
            "0" | "off" | "false"
        );
        let pdl = major >= 9 && !matches!(env("KESTREL_CUDA_PDL").as_str(), "0" | "off" | "false");
        let mv_tune = crate::ops::matmul::MvTune {
            threads_per_row: env("KESTREL_CUDA_MV_G").parse().ok(),
            rows: env("KESTREL_CUDA_MV_R").parse().ok(),
        };
        ctx.bind_to_thread()
            .map_err(|e| anyhow!("binding the CUDA context: {e:?}"))?;
        let gemm = crate::ops::gemm::GemmState::new(&stream);
        let fd_tune = crate::ops::attention::FdTune {
            tensor_cores: !matches!(env("KESTREL_CUDA_FD_TC").as_str(), "0" | "off" | "false"),
            cap: env("KESTREL_CUDA_FD_SPLITS").parse().ok(),
        };
        let prefill_min = match env("KESTREL_CUDA_PREFILL_MIN").as_str() {
            "0" | "off" | "false" => usize::MAX,
            v => v
                .parse()
                .unwrap_or(crate::ops::attention::PREFILL_MIN_TOKENS),
        };
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
                epoch: 0,
            }),
            state: Mutex::new(State {
                qbuf: None,
                qbuf_bytes: 0,
                cached: None,
                pref: None,
                max_cols: 0,
                n_tokens: 0,
                min_keys: 0,
                max_keys: 0,
                ids: None,
                stats: QuantStats::default(),
                producers: true,
            }),
            graphs: Mutex::new(Graphs {
                mode,
                epoch: (0, 0),
                recorded: HashMap::new(),
                peak: HashMap::new(),
                current: None,
                recordings: 0,
                replays: 0,
            }),
            fast_matvec,
            pdl,
            mv_tune: Mutex::new(mv_tune),
            gemm,
            prefill_min: Mutex::new(prefill_min),
            prefill_variant: Mutex::new(None),
            sm_count,
            smem_optin,
            fd_tune: Mutex::new(fd_tune),
            fuse_matmuls: !matches!(env("KESTREL_CUDA_FUSE").as_str(), "0" | "off" | "false"),
            device_name,
            arch,
            table_placement: Mutex::new(TablePlacement::Auto),
            tables: Mutex::new(Vec::new()),
        })
    }

    /// Where tables uploaded from now on go (`kestrel --ple`; tests force each).
    pub fn set_table_placement(&self, p: TablePlacement) {
        *self.table_placement.lock().expect("lock") = p;
    }

    /// Where `upload_table` put each table so far, and why.
    pub fn table_reports(&self) -> Vec<TableReport> {
        self.tables.lock().expect("lock").clone()
    }

    /// Set how steps use CUDA graphs (tests compare `On` with `Pad`). Graphs already
    /// recorded stay for when the mode is `On` again.
    pub fn set_graph_mode(&self, mode: GraphMode) {
        let mut g = self.graphs.lock().expect("graphs lock");
        g.mode = mode;
        g.current = None;
    }

    pub fn graph_mode(&self) -> GraphMode {
        self.graphs.lock().expect("graphs lock").mode
    }

    /// (graphs recorded, replays) so far.
    pub fn graph_stats(&self) -> (usize, usize) {
        let g = self.graphs.lock().expect("graphs lock");
        (g.recordings, g.replays)
    }

    pub fn quant_stats(&self) -> QuantStats {
        self.state().stats
    }

    /// Whether RMS norm and the gated activation also write the next matmul's 8-bit blocks
    /// (on by default; tests compare with off).
    pub fn set_fused_producers(&self, on: bool) {
        self.state().producers = on;
    }

    /// Record the launches `f` makes into a CUDA graph instead of running them (benchmarks
    /// replay it to time kernels without launch gaps).
    pub fn record(&self, f: impl FnOnce()) -> Result<CudaGraph> {
        self.bind();
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| anyhow!("begin capture: {e:?}"))?;
        f();
        self.stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(|e| anyhow!("end capture: {e:?}"))?
            .ok_or_else(|| anyhow!("empty graph"))
    }

    /// Force the 16-byte matvecs' threads per row and rows per group (None: chosen per
    /// weight; invalid values are ignored).
    pub fn set_mv_tune(&self, t: crate::ops::matmul::MvTune) {
        *self.mv_tune.lock().expect("lock") = t;
    }

    pub fn mv_tune(&self) -> crate::ops::matmul::MvTune {
        *self.mv_tune.lock().expect("lock")
    }

    /// Runs of at least `min` query tokens take the prefill attention kernel from the next
    /// `begin_step` on (`usize::MAX`: never; tests force 1). Drops recorded graphs, whose steps
    /// may have been split differently.
    pub fn set_prefill_min(&self, min: usize) {
        *self.prefill_min.lock().expect("lock") = min.max(1);
        self.graphs.lock().expect("graphs lock").recorded.clear();
    }

    pub fn prefill_min(&self) -> usize {
        *self.prefill_min.lock().expect("lock")
    }

    /// Run the `i`-th configuration of the prefill kernel of each head dim
    /// (`ops::attention::prefill_cfgs`; a head dim with fewer takes the decode kernel), or
    /// (None) choose per step. For tests and benchmarks.
    pub fn set_prefill_variant(&self, i: Option<usize>) {
        *self.prefill_variant.lock().expect("lock") = i;
    }

    pub fn prefill_variant(&self) -> Option<usize> {
        *self.prefill_variant.lock().expect("lock")
    }

    /// How flash-decoding runs from now on (kernel, split cap). For tests and benchmarks:
    /// a change applies to steps recorded after it.
    pub fn set_fd_tune(&self, t: crate::ops::attention::FdTune) {
        *self.fd_tune.lock().expect("lock") = t;
    }

    pub fn fd_tune(&self) -> crate::ops::attention::FdTune {
        *self.fd_tune.lock().expect("lock")
    }

    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// Shared memory (bytes) a block may use on this device, opting in.
    pub(crate) fn smem_optin(&self) -> usize {
        self.smem_optin
    }

    /// Whether matmuls sharing an input run as one launch (`matmuls`).
    pub fn fuse_matmuls(&self) -> bool {
        self.fuse_matmuls
    }

    /// Whether kernels launch with programmatic dependent launch.
    pub fn pdl(&self) -> bool {
        self.pdl
    }

    /// Whether the 16-byte matvec kernels (and the repacked Q6_K/Q8_0/Q4_0 rows) are in use.
    pub fn fast_matvec(&self) -> bool {
        self.fast_matvec
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

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("backend state lock")
    }

    /// Launch a kernel on the backend's stream; a launch error is a bug or a lost device, and
    /// panics like any other op failure. The kernel may write anywhere, so the quantized-input
    /// cache forgets its input; launchers that know what they write use `launch_w`.
    pub(crate) fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[Arg],
    ) {
        self.state().cached = None;
        self.gemm.forget();
        self.launch_raw(name, grid, block, smem, args);
    }

    /// `launch` for a kernel that writes only `writes` (address, bytes).
    pub(crate) fn launch_w(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[Arg],
        writes: (u64, usize),
    ) {
        self.wrote(writes.0, writes.1);
        self.launch_raw(name, grid, block, smem, args);
    }

    /// Forget the quantized input if `bytes` at `ptr` overlap it.
    pub(crate) fn wrote(&self, ptr: u64, bytes: usize) {
        self.gemm.wrote(ptr, bytes);
        let mut st = self.state();
        if let Some(c) = st.cached {
            let len = (c.rows * c.cols * 4) as u64;
            if ptr < c.src + len && c.src < ptr + bytes as u64 {
                st.cached = None;
            }
        }
    }

    /// The 8-bit blocks of `x` in `fmt`: the cached ones when `x` was the last input quantized
    /// (or a producer wrote them), else quantized now — into the step's `qbuf` when it fits
    /// (and then remembered), else into arena scratch.
    pub(crate) fn quantized(&self, x: &CudaTensor, fmt: ActFmt) -> QInput {
        let key = Quantized {
            src: x.ptr,
            rows: x.rows,
            cols: x.cols,
            fmt,
        };
        let lay = fmt.layout(x.rows, x.cols);
        let qbuf = {
            let mut st = self.state();
            st.pref = Some(fmt);
            let qbuf = st.qbuf.as_ref().map(|q| q.ptr);
            if st.cached == Some(key) {
                st.stats.reused += 1;
                return QInput {
                    base: qbuf.expect("a cached input lives in qbuf"),
                    lay,
                    _scratch: None,
                };
            }
            st.stats.quantized += 1;
            qbuf.filter(|_| lay.bytes <= st.qbuf_bytes)
        };
        match qbuf {
            Some(base) => {
                crate::ops::matmul::quantize(self, x, fmt, base, lay);
                self.state().cached = Some(key);
                QInput {
                    base,
                    lay,
                    _scratch: None,
                }
            }
            None => {
                let scratch = self.scratch(lay.bytes);
                crate::ops::matmul::quantize(self, x, fmt, scratch.ptr, lay);
                QInput {
                    base: scratch.ptr,
                    lay,
                    _scratch: Some(scratch),
                }
            }
        }
    }

    /// Where a producer of `out` (`rows × cols`) may also write its 8-bit blocks for the next
    /// matmul: the format the last matmul read and `qbuf`'s address, if the blocks fit. After
    /// launching, the producer calls `produced`.
    pub(crate) fn produce_target(&self, out: &CudaTensor) -> Option<(ActFmt, u64, ActLayout)> {
        let st = self.state();
        if !st.producers {
            return None;
        }
        let fmt = st.pref?;
        let base = st.qbuf.as_ref()?.ptr;
        if !out.cols.is_multiple_of(fmt.block()) {
            return None;
        }
        let lay = fmt.layout(out.rows, out.cols);
        (lay.bytes <= st.qbuf_bytes).then_some((fmt, base, lay))
    }

    /// A producer wrote `out` and its 8-bit blocks in `fmt` to `qbuf`.
    pub(crate) fn produced(&self, out: &CudaTensor, fmt: ActFmt) {
        let mut st = self.state();
        st.stats.produced += 1;
        st.cached = Some(Quantized {
            src: out.ptr,
            rows: out.rows,
            cols: out.cols,
            fmt,
        });
    }

    /// The current step's decode-attention launches (`ops::attention::launch_key`).
    pub(crate) fn step_attn_key(&self) -> usize {
        let st = self.state();
        crate::ops::attention::launch_key(st.min_keys, st.max_keys)
    }

    fn launch_raw(
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
        if self.pdl {
            let mut attr = sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                pad: [0; 4],
                value: sys::CUlaunchAttributeValue {
                    programmaticStreamSerializationAllowed: 1,
                },
            };
            let config = sys::CUlaunchConfig {
                gridDimX: grid.0,
                gridDimY: grid.1,
                gridDimZ: grid.2,
                blockDimX: block.0,
                blockDimY: block.1,
                blockDimZ: block.2,
                sharedMemBytes: smem,
                hStream: self.stream.cu_stream(),
                attrs: &mut attr,
                numAttrs: 1,
            };
            // SAFETY: as below; `config` and `attr` live through the call.
            unsafe {
                sys::cuLaunchKernelEx(
                    &config,
                    f.cu_function(),
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            }
            .result()
            .unwrap_or_else(|e| panic!("launching kernel {name}: {e:?}"));
            return;
        }
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

    pub(crate) fn bind(&self) {
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
        self.wrote(t.ptr, t.len() * 4);
        // SAFETY: `t` owns `t.len()` f32s at `t.ptr`; the copy is ordered on the stream and
        // synchronised before `data` may go away.
        unsafe { cu::memcpy_htod_async(t.ptr, data, self.stream.cu_stream()) }
            .expect("host-to-device copy");
        self.synchronize();
    }

    /// Set every value of a tensor (tests poison outputs with NaN).
    pub fn fill(&self, t: &mut CudaTensor, v: f32) {
        let n = t.len();
        self.launch_w(
            "fill",
            (grid_for(n, 256), 1, 1),
            (256, 1, 1),
            0,
            &[Arg::Ptr(t.ptr), Arg::F32(v), Arg::U64(n as u64)],
            (t.ptr, n * 4),
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

/// A weight's bytes in the layout the device keeps, before they are placed.
struct Staged<'a> {
    bytes: std::borrow::Cow<'a, [u8]>,
    ty: GgmlType,
    cols: usize,
    rows: usize,
    row_bytes: usize,
    repacked: bool,
}

impl Staged<'_> {
    fn into_weight(self, mem: WeightMem, ptr: u64) -> CudaWeight {
        CudaWeight {
            mem,
            ptr,
            ty: self.ty,
            cols: self.cols,
            rows: self.rows,
            row_bytes: self.row_bytes,
            repacked: self.repacked,
            bf16: std::sync::OnceLock::new(),
        }
    }
}

impl CudaBackend {
    /// 1-D tensors decoded to f32, matrices checked and (for the 16-byte matvecs) repacked.
    fn stage<'a>(&self, w: &'a WeightRef) -> Result<Staged<'a>> {
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
        let mut row_bytes = ty
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
        let repacked = self.fast_matvec && w.shape.len() > 1 && crate::ops::matmul::repacks(ty);
        let bytes: std::borrow::Cow<[u8]> = if repacked {
            let b = crate::ops::matmul::repack(ty, &bytes[..row_bytes * rows], rows, cols);
            row_bytes = crate::ops::matmul::repacked_row_bytes(ty, cols);
            b.into()
        } else {
            bytes
        };
        if w.shape.len() > 1 {
            let mut st = self.state();
            st.max_cols = st.max_cols.max(cols);
        }
        Ok(Staged {
            bytes,
            ty,
            cols,
            rows,
            row_bytes,
            repacked,
        })
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

    /// Measured on the H200 (qwen3-8b pp4096, docs/benchmarks/h200-summary.md): 15.1k, 20.6k,
    /// 21.8k and 22.3k t/s at 256, 512, 1024 and 2048 tokens per pass.
    fn default_ubatch(&self) -> usize {
        2048
    }

    fn name(&self) -> String {
        format!("CUDA ({}, {})", self.device_name, self.arch)
    }

    fn upload(&self, w: WeightRef) -> Result<CudaWeight> {
        let s = self.stage(&w)?;
        let buf = self
            .stream
            .clone_htod(&s.bytes[..])
            .map_err(|e| anyhow!("uploading {} ({} bytes): {e:?}", w.name, s.bytes.len()))?;
        let ptr = slice_ptr(&buf, &self.stream);
        Ok(s.into_weight(WeightMem::Device { _buf: buf }, ptr))
    }

    /// Device memory when the table fits (`table::table_on_device`), else mapped host memory;
    /// the choice is reported in `table_reports`.
    fn upload_table(&self, w: WeightRef) -> Result<CudaWeight> {
        let s = self.stage(&w)?;
        let placement = *self.table_placement.lock().expect("lock");
        self.synchronize();
        let free = cu::mem_get_info().map_or(0, |(free, _)| free);
        let reserve = self.default_cache_reserve();
        let bytes = s.bytes.len();
        let mut placed = None;
        if crate::table::table_on_device(placement, bytes, free, reserve) {
            match self.stream.clone_htod(&s.bytes[..]) {
                Ok(buf) => {
                    let ptr = slice_ptr(&buf, &self.stream);
                    placed = Some((WeightMem::Device { _buf: buf }, ptr));
                }
                // Free memory was a snapshot (another process may have taken some since): the
                // slower home beats failing to load.
                Err(_) if placement == TablePlacement::Auto => {}
                Err(e) => bail!("uploading {} ({bytes} bytes): {e:?}", w.name),
            }
        }
        let on_device = placed.is_some();
        let (mem, ptr) = match placed {
            Some(p) => p,
            None => {
                let (t, ptr) =
                    HostTable::new(&self.ctx, &self.stream, &s.bytes).with_context(|| {
                        format!("keeping {} ({bytes} bytes) in host memory", w.name)
                    })?;
                (WeightMem::Host { _table: t }, ptr)
            }
        };
        self.tables.lock().expect("lock").push(TableReport {
            name: w.name.to_string(),
            bytes,
            placement,
            on_device,
            free,
            reserve,
        });
        Ok(s.into_weight(mem, ptr))
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
        let n = step.tokens.len();
        let max_keys = step.positions.iter().max().map_or(0, |&p| p as usize + 1);
        let min_keys = step.positions.iter().min().map_or(0, |&p| p as usize + 1);
        let (arena_epoch, prev) = {
            let mut a = self.arena.lock().expect("arena lock");
            // The previous step's arena use, if it ran eagerly under a graph key.
            let prev = match self.graphs.lock().expect("graphs lock").current.take() {
                Some((key, false)) => Some((key, a.peak())),
                _ => None,
            };
            a.reset()
                .unwrap_or_else(|e| panic!("growing the activation arena: {e:#}"));
            (a.epoch(), prev)
        };
        // The quantized-input buffer comes first in the arena, at the same address every step.
        {
            let mut st = self.state();
            st.cached = None;
            st.qbuf = None;
            st.n_tokens = n;
            st.min_keys = min_keys;
            st.max_keys = max_keys;
            st.qbuf_bytes = if st.max_cols > 0 {
                ActFmt::max_bytes(n, st.max_cols)
            } else {
                0
            };
            let (bytes, max_cols) = (st.qbuf_bytes, st.max_cols);
            drop(st);
            let q = (bytes > 0).then(|| self.scratch(bytes));
            self.state().qbuf = q;
            // Then the GEMM path's bf16 input and workspace, when the step may use them.
            crate::ops::gemm::begin_step(self, n, max_cols);
        }
        let (runs, decode) = crate::ops::attention::split_runs(
            &step.positions,
            &step.seq_index,
            &step.chunks,
            self.prefill_min(),
        );
        let mut sb = self.step_buf.lock().expect("step buffer lock");
        // Layout: tokens, positions, slots, seq_index [n each], logit rows, block-table offsets
        // [n_seq + 1], prefill runs [2 × n_runs] and decode rows [n_decode] (both empty when no
        // run is long enough), flattened block tables — so for a fixed (n, n_logits, n_seq) and
        // split into runs every array but the last starts at a fixed offset, whatever the block
        // tables hold.
        let host = &mut sb.host;
        host.clear();
        host.extend_from_slice(&step.tokens);
        host.extend_from_slice(&step.positions);
        host.extend_from_slice(&step.slots);
        host.extend_from_slice(&step.seq_index);
        host.extend_from_slice(&step.logit_rows);
        let mut off = 0u32;
        for bt in &step.block_tables {
            host.push(off);
            off += bt.len() as u32;
        }
        host.push(off);
        let runs_at = host.len();
        for &(t0, len) in &runs {
            host.push(t0);
            host.push(len);
        }
        let decode_at = host.len();
        if !runs.is_empty() {
            host.extend_from_slice(&decode);
        }
        let flat_at = host.len();
        for bt in &step.block_tables {
            host.extend_from_slice(bt);
        }
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
            sb.epoch += 1;
        }
        if !sb.host.is_empty() {
            // SAFETY: the step buffer holds `cap >= host.len()` u32s. A pageable source is staged
            // by the driver before the call returns, so `host` may be reused afterwards.
            unsafe { cu::memcpy_htod_async(sb.ptr, &sb.host[..], self.stream.cu_stream()) }
                .unwrap_or_else(|e| panic!("uploading the step: {e:?}"));
        }
        let at = |k: usize| sb.ptr + 4 * k as u64;
        let n_logits = step.logit_rows.len();
        let step_epoch = sb.epoch;
        let out = CudaStep {
            n_tokens: n,
            n_logits,
            max_keys,
            min_keys,
            tokens: at(0),
            positions: at(n),
            slots: at(2 * n),
            seq_index: at(3 * n),
            logit_rows: at(4 * n),
            bt_off: at(4 * n + n_logits),
            bt_flat: at(flat_at),
            prefill_runs: at(runs_at),
            decode_rows: if runs.is_empty() { 0 } else { at(decode_at) },
            n_decode: if runs.is_empty() { n } else { decode.len() },
            prefill_lens: runs.iter().map(|r| r.1).collect(),
        };
        drop(sb);
        let mut g = self.graphs.lock().expect("graphs lock");
        if g.epoch != (arena_epoch, step_epoch) {
            g.epoch = (arena_epoch, step_epoch);
            g.recorded.clear();
            g.peak.clear();
        }
        if let Some((key, peak)) = prev {
            g.peak.insert(key, peak);
        }
        out
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

    fn matmuls(&self, x: &CudaTensor, jobs: &mut [(&CudaWeight, &mut CudaTensor)]) {
        crate::ops::matmul::matmuls(self, x, jobs)
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

    fn add_rms_norm(
        &self,
        x: &mut CudaTensor,
        y: &CudaTensor,
        w: Option<&CudaWeight>,
        width: usize,
        eps: f32,
        scale: Option<&CudaWeight>,
        tmp: &mut CudaTensor,
    ) {
        crate::ops::norm::add_rms_norm(self, x, y, w, width, eps, scale, tmp)
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
        self.wrote(dst.ptr, dst.len() * 4);
        // SAFETY: both tensors hold `len` f32s; stream-ordered.
        unsafe { cu::memcpy_dtod_async(dst.ptr, src.ptr, src.len() * 4, self.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("device copy: {e:?}"));
    }

    /// Tokens of chunks that take the prefill attention kernel get the same attention bits in
    /// any chunk and step (its key tiles are aligned to absolute positions and each row's
    /// arithmetic is its own); shorter chunks take the decode kernel, whose key splits follow
    /// the step's longest context. The matvecs are batch-invariant; the GEMM path is not
    /// (whether a matmul takes it follows the step's row count, and cuBLAS picks its algorithm,
    /// so its summation order, by shape), so with it on a token's bits already depend on its
    /// step's neighbours and sharing prefix blocks adds nothing new (the trait's looser reading):
    /// prefix reuse stays on. Assumes the model's head dims have a prefill kernel (64, 128, 256,
    /// 512).
    fn chunk_invariant(&self, chunk: Chunk) -> bool {
        chunk.len as usize >= self.prefill_min()
    }

    fn read(&self, x: &CudaTensor) -> Vec<f32> {
        if matches!(
            self.graphs.lock().expect("graphs lock").current,
            Some((_, true))
        ) {
            panic!("a tensor read while a step is recorded as a CUDA graph (set KESTREL_CUDA_GRAPHS=0 to read intermediates)");
        }
        let mut out = vec![0f32; x.len()];
        self.synchronize();
        if !out.is_empty() {
            // SAFETY: `x` holds `len` f32s; the stream is idle.
            unsafe { cu::memcpy_dtoh_sync(&mut out, x.ptr) }
                .unwrap_or_else(|e| panic!("device-to-host copy: {e:?}"));
        }
        out
    }

    fn argmax_rows(&self, x: &CudaTensor, cols: usize) -> Vec<u32> {
        assert!(
            cols > 0 && x.len().is_multiple_of(cols),
            "argmax_rows: {} values in rows of {cols}",
            x.len()
        );
        let rows = x.len() / cols;
        if rows == 0 {
            return Vec::new();
        }
        let ids = {
            let mut st = self.state();
            if st.ids.as_ref().is_none_or(|b| b.len() < rows) {
                let buf = self
                    .stream
                    .alloc_zeros::<u32>(rows.next_power_of_two().max(64))
                    .unwrap_or_else(|e| panic!("allocating argmax output: {e:?}"));
                st.ids = Some(buf);
            }
            slice_ptr(st.ids.as_ref().expect("just made"), &self.stream)
        };
        self.launch_w(
            "argmax_rows",
            (rows as u32, 1, 1),
            (1024, 1, 1),
            0,
            &[Arg::Ptr(x.ptr), Arg::I32(cols as i32), Arg::Ptr(ids)],
            (ids, rows * 4),
        );
        let mut out = vec![0u32; rows];
        self.synchronize();
        // SAFETY: the buffer holds at least `rows` u32s; the stream is idle.
        unsafe { cu::memcpy_dtoh_sync(&mut out, ids) }
            .unwrap_or_else(|e| panic!("device-to-host copy: {e:?}"));
        out
    }

    fn graph_buckets(&self) -> &[usize] {
        match self.graph_mode() {
            GraphMode::Off => &[],
            GraphMode::Pad | GraphMode::On => &GRAPH_BUCKETS,
        }
    }

    fn prefill_graph_buckets(&self) -> &[usize] {
        match self.graph_mode() {
            GraphMode::Off => &[],
            GraphMode::Pad | GraphMode::On => &PREFILL_GRAPH_BUCKETS,
        }
    }

    fn graph_replay(&self, bucket: GraphBucket) -> Option<CudaTensor> {
        let key = (bucket, self.step_attn_key());
        let mut g = self.graphs.lock().expect("graphs lock");
        if g.mode != GraphMode::On {
            return None;
        }
        let r = g.recorded.get(&key)?;
        let (out, rows, cols) = (r.out, r.rows, r.cols);
        r.graph
            .launch()
            .unwrap_or_else(|e| panic!("replaying the step graph for {key:?}: {e:?}"));
        g.replays += 1;
        g.current = None;
        Some(CudaTensor::alias(out, rows, cols, &self.arena))
    }

    fn graph_begin(&self, bucket: GraphBucket) -> bool {
        let key = (bucket, self.step_attn_key());
        let cap = self.arena.lock().expect("arena lock").capacity();
        let mut g = self.graphs.lock().expect("graphs lock");
        if g.mode != GraphMode::On {
            return false;
        }
        // Record only a key that ran eagerly since the arena last moved, and fits it: then the
        // recorded step allocates nothing outside the arena.
        let ready = g.peak.get(&key).is_some_and(|&p| p <= cap);
        if !ready {
            g.current = Some((key, false));
            return false;
        }
        self.bind();
        match self
            .stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        {
            Ok(()) => {
                g.current = Some((key, true));
                true
            }
            Err(e) => {
                eprintln!("kestrel-cuda: cannot record a CUDA graph ({e:?}); running eagerly");
                g.mode = GraphMode::Pad;
                g.current = Some((key, false));
                false
            }
        }
    }

    fn graph_end(&self, _bucket: GraphBucket, logits: &CudaTensor) -> bool {
        let mut g = self.graphs.lock().expect("graphs lock");
        let Some((key, true)) = g.current.take() else {
            return false;
        };
        match self.stream.end_capture(sys::CUgraphInstantiate_flags(0)) {
            Ok(Some(graph)) => {
                graph
                    .launch()
                    .unwrap_or_else(|e| panic!("launching the step graph for {key:?}: {e:?}"));
                g.recorded.insert(
                    key,
                    Recorded {
                        graph,
                        out: logits.ptr,
                        rows: logits.rows,
                        cols: logits.cols,
                    },
                );
                g.recordings += 1;
                true
            }
            other => {
                eprintln!(
                    "kestrel-cuda: recording a CUDA graph failed ({:?}); running eagerly",
                    other.err()
                );
                g.mode = GraphMode::Pad;
                false
            }
        }
    }
}
