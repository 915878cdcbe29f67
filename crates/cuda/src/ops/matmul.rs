//! out = x · Wᵀ (kernels/quantize.cu + kernels/mv.cu, kernels/matvec.cu).
//!
//! Quantized weights: the activations are quantized to the 8-bit format the CPU backend pairs
//! with the weight type — A32 (the CPU's Q8_0/Q8_1 blocks) for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, A256
//! (its Q8_K) for the K-quants — so both backends form the same integer sums; then a dp4a matvec
//! runs. The GPU keeps the blocks as arrays (codes, then scales, then
//! sums: `ActLayout`) so codes load 16 bytes at a time.
//!
//! Quantizing once per input, not once per matmul: the backend remembers the last quantized
//! input (`CudaBackend::quantized`), so q/k/v (and gate/up) of one normed input share one
//! quantization, and the producers of matmul inputs — RMS norm of a whole row, the gated
//! activation — write the 8-bit blocks themselves as they write their output (kernels/norm.cu,
//! kernels/act.cu), in the format the last matmul used. Every launch that may write an input's
//! memory forgets it.
//!
//! Kernels: Q4_K, Q6_K, Q8_0 and Q4_0 (what Q4_K_M, Q6_K, Q8_0 and Q4_0 models are made of) have
//! 16-byte kernels (`mv_<type>_<NT>_<R>`, kernels/mv.cu): G threads per row chosen from the shape
//! (`threads_per_row`), R rows per thread group sharing each token's activations, 1-16 tokens per
//! pass; `matmuls` runs weights sharing an input as one launch. Q6_K, Q8_0 and Q4_0 rows, whose
//! blocks are not 16-byte aligned, are repacked at upload (`repack_*`). Every other type runs the
//! generic kernel (`matvec_<type>`, one warp per row), as do all types with
//! `KESTREL_CUDA_FAST_MATVEC=0`. Float weights (F32/F16/BF16) take the f32 activations directly.

use kestrel_gguf::GgmlType;

use crate::backend::{Arg, CudaBackend, CudaTensor, CudaWeight};

/// Bytes of one Q8_1 block (f16 d, f16 s, 32 int8): the reference layout of A32.
pub const Q8_1_BYTES: usize = 36;
/// Bytes of one Q8_K block (f32 d, 256 int8, 16 int16 sums): the reference layout of A256.
pub const Q8_K_BYTES: usize = 292;

/// Rows per 128-thread block of the generic matvecs (one warp per row).
const ROWS_PER_BLOCK: usize = 4;
/// Threads per block of the 16-byte matvecs (kernels/mv.cu `MV_THREADS`).
const MV_THREADS: usize = 128;

/// The GPU's 8-bit activation formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActFmt {
    /// Per 32 values: f16 d, f16 s (= d · Σq), 32 codes (the CPU's Q8_1; Q8_0 without s).
    A32,
    /// Per 256 values: f32 d, 256 codes, 16 int16 sums of 16 codes (the reference Q8_K).
    A256,
}

/// Where the parts of `n` rows of `k` activations sit in one buffer (byte offsets; codes at 0,
/// `[n][k]` int8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActLayout {
    /// A32: f16 d `[n][k/32]`; A256: f32 d `[n][k/256]`.
    pub d: usize,
    /// A32: f16 s `[n][k/32]`; A256: int16 sums `[n][k/16]`.
    pub s: usize,
    pub bytes: usize,
}

const fn a16(x: usize) -> usize {
    x.next_multiple_of(16)
}

impl ActFmt {
    pub fn block(self) -> usize {
        match self {
            ActFmt::A32 => 32,
            ActFmt::A256 => 256,
        }
    }

    pub fn layout(self, n: usize, k: usize) -> ActLayout {
        let codes = a16(n * k);
        let (d_bytes, s_bytes) = match self {
            ActFmt::A32 => (2 * n * k / 32, 2 * n * k / 32),
            ActFmt::A256 => (4 * n * k / 256, 2 * n * k / 16),
        };
        let d = codes;
        let s = d + a16(d_bytes);
        ActLayout {
            d,
            s,
            bytes: s + a16(s_bytes),
        }
    }

    /// The larger of the two layouts' sizes (what a buffer for either must hold).
    pub fn max_bytes(n: usize, k: usize) -> usize {
        let k = k.next_multiple_of(256);
        ActFmt::A32
            .layout(n, k)
            .bytes
            .max(ActFmt::A256.layout(n, k).bytes)
    }
}

/// The activation format a weight type's matvec reads (None for float weights).
pub fn act_fmt(ty: GgmlType) -> Option<ActFmt> {
    use GgmlType::*;
    match ty {
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => Some(ActFmt::A32),
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K => Some(ActFmt::A256),
        _ => None,
    }
}

fn generic_kernel(ty: GgmlType) -> Option<&'static str> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 => "matvec_q4_0",
        Q4_1 => "matvec_q4_1",
        Q5_0 => "matvec_q5_0",
        Q5_1 => "matvec_q5_1",
        Q8_0 => "matvec_q8_0",
        Q2_K => "matvec_q2_k",
        Q3_K => "matvec_q3_k",
        Q4_K => "matvec_q4_k",
        Q5_K => "matvec_q5_k",
        Q6_K => "matvec_q6_k",
        F32 => "matvec_f32",
        F16 => "matvec_f16",
        BF16 => "matvec_bf16",
        _ => return None,
    })
}

/// Overrides of the 16-byte matvecs' launch shape (tests and benchmarks; `None`: the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MvTune {
    /// Threads per row (a power of two, 4..=128). Changes the summation order, so a token's
    /// bits differ from those under another value (never varies within a model's run).
    pub threads_per_row: Option<usize>,
    /// Rows per thread group (1, 2, 4; 16 tokens: 1, 2). Changes no result bit.
    pub rows: Option<usize>,
}

/// How a 16-byte matvec launches (kernels/mv.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MvShape {
    pub name: &'static str,
    /// Tokens per pass (NT).
    pub nt: usize,
    /// Threads per row (G).
    pub threads: usize,
    /// Rows per thread group (R).
    pub rows: usize,
}

/// Units of a 16-byte kernel per row (kernels/mv.cu: 64 values of Q4_K / Q6_K, 32 of Q8_0 / Q4_0).
fn units_per_row(ty: GgmlType, cols: usize) -> usize {
    match ty {
        GgmlType::Q4_K | GgmlType::Q6_K => cols / 64,
        _ => cols / 32,
    }
}

/// Threads per row: a function of the matrix's shape only (it fixes each row's summation order,
/// so it must not depend on the token count). Measured on the H200 (docs/benchmarks/
/// cuda-decode.md): matrices of >= 4096 rows are fastest with 2-4 units per thread (the largest
/// power of two <= half the units), shorter ones with one unit per thread, a row spread over up
/// to 4 warps (split-K inside the block) so that k/v-sized matrices still have enough loads in
/// flight.
///
/// Q8_0 (a unit is 34 bytes with a cheap decode, so a thread wants more of them in flight) was
/// measured apart (docs/benchmarks/cuda-matvec.md, E4B shapes): tall matrices are fastest with
/// 4-7 units per thread (gate/up 10240 × 2560: G = 16 7.95 µs vs G = 32 8.65), and short ones
/// with G capped so that rows × G stays within one wave of resident threads, 2^18 (down
/// 2560 × 10240: G = 64 8.10 µs vs G = 128 9.78; k/v 512 rows keep 128).
/// `KESTREL_CUDA_MV_SHAPE=v1` restores the rule before that (A/B).
pub fn threads_per_row(ty: GgmlType, rows: usize, cols: usize) -> usize {
    static V1: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let v1 = *V1.get_or_init(|| std::env::var("KESTREL_CUDA_MV_SHAPE").is_ok_and(|v| v == "v1"));
    let nu = units_per_row(ty, cols).max(1);
    let g = if ty == GgmlType::Q8_0 && !v1 {
        if rows >= 4096 {
            1usize << (nu / 4).max(1).ilog2()
        } else {
            let wave = 1usize << (((1usize << 18) / rows.max(1)).max(1).ilog2());
            nu.next_power_of_two().min(wave)
        }
    } else if rows >= 4096 {
        1usize << (nu / 2).max(1).ilog2()
    } else {
        nu.next_power_of_two()
    };
    g.clamp(4, 128)
}

/// Rows per thread group by default (measured as above): 2 for 1-2 tokens (1 for Q8_0 rows
/// spread over 4 warps, whose loads are already many and light), 4 for 4 tokens and for 8 on
/// large matrices (each token's activations then serve 4 rows), else 2.
pub fn default_rows(ty: GgmlType, rows: usize, g: usize, nt: usize) -> usize {
    match nt {
        1 | 2 if ty == GgmlType::Q8_0 && g == 128 => 1,
        1 | 2 => 2,
        4 => 4,
        8 if rows >= 8192 => 4,
        _ => 2,
    }
}

/// The 16-byte kernel for a weight and token count: NT tokens per pass (1, 2, 4, 8, 16), R rows
/// per thread group (any R gives the same bits; more rows reuse each token's activations).
fn fast_kernel(b: &CudaBackend, w: &CudaWeight, n_tok: usize) -> Option<MvShape> {
    if !b.fast_matvec() {
        return None;
    }
    let ty = match (w.ty, w.repacked) {
        (GgmlType::Q4_K, false) => "q4_k",
        (GgmlType::Q6_K, true) => "q6_kr",
        (GgmlType::Q8_0, true) => "q8_0r",
        (GgmlType::Q4_0, true) => "q4_0r",
        _ => return None,
    };
    let nt = match n_tok {
        1 => 1,
        2 => 2,
        3 | 4 => 4,
        5..=8 => 8,
        _ => 16,
    };
    let tune = b.mv_tune();
    let g = tune
        .threads_per_row
        .filter(|g| g.is_power_of_two() && (4..=128).contains(g))
        .unwrap_or_else(|| threads_per_row(w.ty, w.rows, w.cols));
    let max_r = if nt == 16 { 2 } else { 4 };
    let r = tune
        .rows
        .filter(|r| matches!(r, 1 | 2 | 4) && *r <= max_r)
        .unwrap_or_else(|| default_rows(w.ty, w.rows, g, nt));
    Some(MvShape {
        name: mv_name(ty, nt, r),
        nt,
        threads: g,
        rows: r,
    })
}

/// `mv_<type>_<NT>_<R>` as a static name (the kernel table's keys).
fn mv_name(ty: &str, nt: usize, r: usize) -> &'static str {
    const TYPES: [&str; 4] = ["q4_k", "q6_kr", "q8_0r", "q4_0r"];
    const SHAPES: [(usize, usize); 14] = [
        (1, 1),
        (1, 2),
        (1, 4),
        (2, 1),
        (2, 2),
        (2, 4),
        (4, 1),
        (4, 2),
        (4, 4),
        (8, 1),
        (8, 2),
        (8, 4),
        (16, 1),
        (16, 2),
    ];
    let t = TYPES.iter().position(|&x| x == ty).expect("mv type");
    let s = SHAPES.iter().position(|&x| x == (nt, r)).expect("mv shape");
    crate::kernels::MV_FUNCTIONS[t * SHAPES.len() + s]
}

/// Types whose rows are repacked at upload (when the 16-byte kernels are on).
pub fn repacks(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q6_K | GgmlType::Q8_0 | GgmlType::Q4_0)
}

/// Whether a weight of this type gets a 16-byte kernel (the Q4_K kernel needs none of the
/// repacking, only the 144-byte blocks, which are 16-byte aligned).
pub fn has_fast_kernel(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_K | GgmlType::Q6_K | GgmlType::Q8_0 | GgmlType::Q4_0
    )
}

/// Bytes of a repacked row of `cols` values (padded to 16).
pub fn repacked_row_bytes(ty: GgmlType, cols: usize) -> usize {
    let raw = ty.row_bytes(cols as u64).expect("whole blocks") as usize;
    a16(raw)
}

/// Q6_K rows → the layout of kernels/mv.cu `mv_q6_kr`: per row, for each block b and unit
/// u = 2h + g (h, g in 0..2): ql[64h + 16g .. +16], ql[64h + 32 + 16g .. +16], qh[32h + 16g .. +16]
/// (48 bytes); then every block's 16 scales; then every block's f16 d; padded to 16 bytes.
pub fn repack_q6_k(src: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let nb = cols / 256;
    let (rb, stride) = (nb * 210, repacked_row_bytes(GgmlType::Q6_K, cols));
    let mut out = vec![0u8; rows * stride];
    for (r, dst) in out.chunks_exact_mut(stride).enumerate() {
        let row = &src[r * rb..(r + 1) * rb];
        for b in 0..nb {
            let blk = &row[b * 210..(b + 1) * 210];
            let (ql, qh, sc, d) = (&blk[..128], &blk[128..192], &blk[192..208], &blk[208..210]);
            for h in 0..2 {
                for g in 0..2 {
                    let u = &mut dst[48 * (4 * b + 2 * h + g)..][..48];
                    u[..16].copy_from_slice(&ql[64 * h + 16 * g..][..16]);
                    u[16..32].copy_from_slice(&ql[64 * h + 32 + 16 * g..][..16]);
                    u[32..48].copy_from_slice(&qh[32 * h + 16 * g..][..16]);
                }
            }
            dst[nb * 192 + 16 * b..][..16].copy_from_slice(sc);
            dst[nb * 208 + 2 * b..][..2].copy_from_slice(d);
        }
    }
    out
}

/// Q8_0 rows → the layout of `mv_q8_0r`: per row every block's 32 codes, then every block's f16
/// d, padded to 16 bytes.
pub fn repack_q8_0(src: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let nb = cols / 32;
    let (rb, stride) = (nb * 34, repacked_row_bytes(GgmlType::Q8_0, cols));
    let mut out = vec![0u8; rows * stride];
    for (r, dst) in out.chunks_exact_mut(stride).enumerate() {
        let row = &src[r * rb..(r + 1) * rb];
        for b in 0..nb {
            let blk = &row[b * 34..(b + 1) * 34];
            dst[32 * b..][..32].copy_from_slice(&blk[2..]);
            dst[nb * 32 + 2 * b..][..2].copy_from_slice(&blk[..2]);
        }
    }
    out
}

/// Q4_0 rows → the layout of `mv_q4_0r`: per row every block's 16 nibble bytes, then every
/// block's f16 d, padded to 16 bytes.
pub fn repack_q4_0(src: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let nb = cols / 32;
    let (rb, stride) = (nb * 18, repacked_row_bytes(GgmlType::Q4_0, cols));
    let mut out = vec![0u8; rows * stride];
    for (r, dst) in out.chunks_exact_mut(stride).enumerate() {
        let row = &src[r * rb..(r + 1) * rb];
        for b in 0..nb {
            let blk = &row[b * 18..(b + 1) * 18];
            dst[16 * b..][..16].copy_from_slice(&blk[2..]);
            dst[nb * 16 + 2 * b..][..2].copy_from_slice(&blk[..2]);
        }
    }
    out
}

/// Repack a whole weight, rows split over the host's threads.
pub fn repack(ty: GgmlType, src: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let f: fn(&[u8], usize, usize) -> Vec<u8> = match ty {
        GgmlType::Q6_K => repack_q6_k,
        GgmlType::Q8_0 => repack_q8_0,
        GgmlType::Q4_0 => repack_q4_0,
        other => panic!("repack: {other} is not repacked"),
    };
    let rb = ty.row_bytes(cols as u64).expect("whole blocks") as usize;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(16);
    let per = rows.div_ceil(threads).max(1024);
    if rows <= per {
        return f(src, rows, cols);
    }
    let parts: Vec<Vec<u8>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..rows)
            .step_by(per)
            .map(|r0| {
                let n = per.min(rows - r0);
                let part = &src[r0 * rb..(r0 + n) * rb];
                s.spawn(move || f(part, n, cols))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("repack thread"))
            .collect()
    });
    parts.concat()
}

/// Quantize `x` (`rows × cols`) into `fmt` blocks at `base` laid out as `lay`.
pub(crate) fn quantize(b: &CudaBackend, x: &CudaTensor, fmt: ActFmt, base: u64, lay: ActLayout) {
    assert!(
        x.cols.is_multiple_of(fmt.block()),
        "quantize {fmt:?}: {} columns",
        x.cols
    );
    let n_blocks = x.len() / fmt.block();
    if n_blocks == 0 {
        return;
    }
    let warps_per_block = 8usize;
    let kernel = match fmt {
        ActFmt::A32 => "quantize_a32",
        ActFmt::A256 => "quantize_a256",
    };
    b.launch_w(
        kernel,
        (n_blocks.div_ceil(warps_per_block) as u32, 1, 1),
        ((warps_per_block * 32) as u32, 1, 1),
        0,
        &[
            Arg::Ptr(x.ptr),
            Arg::Ptr(base),
            Arg::Ptr(base + lay.d as u64),
            Arg::Ptr(base + lay.s as u64),
            Arg::U64(n_blocks as u64),
        ],
        (base, lay.bytes),
    );
}

pub fn matmul(b: &CudaBackend, w: &CudaWeight, x: &CudaTensor, out: &mut CudaTensor) {
    assert_eq!(
        x.cols, w.cols,
        "matmul: x has {} columns, W {}",
        x.cols, w.cols
    );
    assert_eq!(
        out.cols, w.rows,
        "matmul: out has {} columns, W {} rows",
        out.cols, w.rows
    );
    assert_eq!(
        out.rows, x.rows,
        "matmul: out has {} rows, x {}",
        out.rows, x.rows
    );
    let n_tok = x.rows;
    if n_tok == 0 || w.rows == 0 {
        return;
    }
    if crate::ops::gemm::takes(b, w, n_tok) {
        return crate::ops::gemm::matmul(b, w, x, out);
    }
    let grid = (w.rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1);
    let block = ((ROWS_PER_BLOCK * 32) as u32, 1, 1);
    let writes = (out.ptr, out.len() * 4);
    let Some(fmt) = act_fmt(w.ty) else {
        let name = generic_kernel(w.ty)
            .unwrap_or_else(|| panic!("matmul: weight type {} is not supported", w.ty));
        b.launch_w(
            name,
            grid,
            block,
            0,
            &[
                Arg::Ptr(w.ptr),
                Arg::U64(w.row_bytes as u64),
                Arg::I32(w.rows as i32),
                Arg::I32(w.cols as i32),
                Arg::Ptr(x.ptr),
                Arg::Ptr(out.ptr),
                Arg::I32(n_tok as i32),
            ],
            writes,
        );
        return;
    };
    let q = b.quantized(x, fmt);
    let nb = w.cols / fmt.block();
    let act_args = [
        Arg::Ptr(q.base),
        Arg::Ptr(q.base + q.lay.d as u64),
        Arg::Ptr(q.base + q.lay.s as u64),
        Arg::Ptr(out.ptr),
        Arg::I32(n_tok as i32),
    ];
    let head = [
        Arg::Ptr(w.ptr),
        Arg::U64(w.row_bytes as u64),
        Arg::I32(w.rows as i32),
    ];
    if let Some(mv) = fast_kernel(b, w, n_tok) {
        launch_mv(b, &q, nb, n_tok, &[(w, out.ptr, mv)], writes);
        return;
    }
    let name = generic_kernel(w.ty)
        .unwrap_or_else(|| panic!("matmul: weight type {} is not supported", w.ty));
    let mut args = head.to_vec();
    args.push(Arg::I32((w.cols / 32) as i32));
    args.extend_from_slice(&act_args);
    b.launch_w(name, grid, block, 0, &args, writes);
}

/// Launch a 16-byte matvec over 1-3 weights that share the quantized input `q` (one grid,
/// consecutive block ranges; kernels/mv.cu `mv_segs`). All segments use the first one's kernel
/// (type, NT, R); each keeps its own threads per row.
fn launch_mv(
    b: &CudaBackend,
    q: &crate::backend::QInput,
    nb: usize,
    n_tok: usize,
    segs: &[(&CudaWeight, u64, MvShape)],
    writes: (u64, usize),
) {
    assert!((1..=3).contains(&segs.len()));
    let r = segs[0].2.rows;
    let mut args = vec![
        Arg::Ptr(q.base),
        Arg::Ptr(q.base + q.lay.d as u64),
        Arg::Ptr(q.base + q.lay.s as u64),
        Arg::I32(nb as i32),
        Arg::I32(n_tok as i32),
    ];
    let mut end = 0usize;
    for i in 0..3 {
        // Unused segments repeat the last one with an empty block range (never reached).
        let (w, out, mv) = segs[i.min(segs.len() - 1)];
        if i < segs.len() {
            end += w.rows.div_ceil(MV_THREADS / mv.threads * r);
        }
        args.extend_from_slice(&[
            Arg::Ptr(w.ptr),
            Arg::U64(w.row_bytes as u64),
            Arg::I32(w.rows as i32),
            Arg::Ptr(out),
            Arg::I32(mv.threads as i32),
            Arg::I32(end as i32),
        ]);
    }
    b.launch_w(
        segs[0].2.name,
        (end as u32, 1, 1),
        (MV_THREADS as u32, 1, 1),
        0,
        &args,
        writes,
    );
}

/// out_i = x · W_iᵀ for weights sharing the input x (q/k/v, gate/up): consecutive weights with
/// the same 16-byte kernel (type and tokens per pass) run as one launch of up to 3 segments,
/// each row with the bits of its own `matmul` (`KESTREL_CUDA_FUSE=0`: one launch each). Weights
/// the GEMM path takes at this token count run through `matmul`, as they would alone.
pub fn matmuls(b: &CudaBackend, x: &CudaTensor, jobs: &mut [(&CudaWeight, &mut CudaTensor)]) {
    let n_tok = x.rows;
    let mut i = 0;
    while i < jobs.len() {
        // Weights the many-rows GEMM path takes (ops/gemm.rs) go through `matmul`.
        let mv_takes = |w: &CudaWeight| {
            if crate::ops::gemm::takes(b, w, n_tok) {
                None
            } else {
                fast_kernel(b, w, n_tok)
            }
        };
        let first = if b.fuse_matmuls() && n_tok > 0 {
            mv_takes(jobs[i].0)
        } else {
            None
        };
        let Some(mv0) = first else {
            let (w, out) = &mut jobs[i];
            matmul(b, w, x, out);
            i += 1;
            continue;
        };
        let mut segs = vec![(jobs[i].0, jobs[i].1.ptr, mv0)];
        let mut j = i + 1;
        while j < jobs.len() && segs.len() < 3 {
            let w = jobs[j].0;
            match mv_takes(w) {
                Some(mv) if w.ty == jobs[i].0.ty && mv.nt == mv0.nt && w.cols == jobs[i].0.cols => {
                    segs.push((w, jobs[j].1.ptr, mv));
                    j += 1;
                }
                _ => break,
            }
        }
        if segs.len() == 1 {
            let (w, out) = &mut jobs[i];
            matmul(b, w, x, out);
            i += 1;
            continue;
        }
        for (w, out) in jobs[i..j].iter() {
            assert_eq!(
                (x.cols, out.cols, out.rows),
                (w.cols, w.rows, x.rows),
                "matmuls: shapes"
            );
        }
        let fmt = act_fmt(jobs[i].0.ty).expect("quantized");
        let q = b.quantized(x, fmt);
        for (_, out) in jobs[i + 1..j].iter() {
            b.wrote(out.ptr, out.len() * 4);
        }
        let out0 = &jobs[i].1;
        launch_mv(
            b,
            &q,
            x.cols / fmt.block(),
            n_tok,
            &segs,
            (out0.ptr, out0.len() * 4),
        );
        i = j;
    }
}

/// Quantize host values with the GPU kernel (Q8_1 rule if `k` is false, else Q8_K) and return
/// the blocks in the reference layout (Q8_1 / Q8_K blocks), for tests.
pub fn quantize_to_host(b: &CudaBackend, x: &[f32], k: bool) -> Vec<u8> {
    use kestrel_engine::Backend;
    let fmt = if k { ActFmt::A256 } else { ActFmt::A32 };
    let mut t = b.alloc(1, x.len());
    b.write(&mut t, x);
    let lay = fmt.layout(1, x.len());
    let mut scratch = b.scratch(lay.bytes);
    b.fill(&mut scratch, f32::NAN);
    quantize(b, &t, fmt, scratch.ptr, lay);
    let raw: Vec<u8> = b
        .read(&scratch)
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    to_reference_blocks(fmt, &raw, lay, x.len())
}

/// Blocks in the `ActLayout` of one row of `k` values → the reference Q8_1 / Q8_K blocks.
pub fn to_reference_blocks(fmt: ActFmt, raw: &[u8], lay: ActLayout, k: usize) -> Vec<u8> {
    let mut out = Vec::new();
    match fmt {
        ActFmt::A32 => {
            for blk in 0..k / 32 {
                out.extend_from_slice(&raw[lay.d + 2 * blk..][..2]);
                out.extend_from_slice(&raw[lay.s + 2 * blk..][..2]);
                out.extend_from_slice(&raw[32 * blk..][..32]);
            }
        }
        ActFmt::A256 => {
            for blk in 0..k / 256 {
                out.extend_from_slice(&raw[lay.d + 4 * blk..][..4]);
                out.extend_from_slice(&raw[256 * blk..][..256]);
                out.extend_from_slice(&raw[lay.s + 32 * blk..][..32]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The repacked layouts and the 16-byte kernels' decoding, checked on the host: a mirror of
    //! each kernel's per-lane arithmetic (same units, same bit manipulation, integer sums) on
    //! random weights and activations, against the dequantized weights times the reference
    //! activation blocks.
    use super::*;
    use kestrel_gguf::quant;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn f(&mut self) -> f32 {
            (self.next() % 20001) as f32 / 10000.0 - 1.0
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn f16_bytes(v: f32) -> [u8; 2] {
        half::f16::from_f32(v).to_le_bytes()
    }

    /// Random blocks with sane f16 scales.
    fn weights(ty: GgmlType, rows: usize, cols: usize, r: &mut Rng) -> Vec<u8> {
        let (bs, ts) = (ty.block_size(), ty.type_size());
        let mut w = r.bytes(rows * cols / bs * ts);
        for blk in w.chunks_exact_mut(ts) {
            match ty {
                GgmlType::Q8_0 | GgmlType::Q4_0 => {
                    blk[..2].copy_from_slice(&f16_bytes(0.01 * (1.0 + r.f())))
                }
                GgmlType::Q6_K => blk[208..].copy_from_slice(&f16_bytes(0.001 * (1.0 + r.f()))),
                GgmlType::Q4_K => {
                    blk[..2].copy_from_slice(&f16_bytes(0.001 * (1.0 + r.f())));
                    blk[2..4].copy_from_slice(&f16_bytes(0.002 * (1.0 + r.f())));
                }
                _ => unreachable!(),
            }
        }
        w
    }

    fn i8x16(b: &[u8]) -> [i32; 4] {
        std::array::from_fn(|k| i32::from_le_bytes(b[4 * k..4 * k + 4].try_into().unwrap()))
    }

    fn dp4a(a: i32, b: i32, c: i32) -> i32 {
        let (a, b) = (a.to_le_bytes(), b.to_le_bytes());
        c + (0..4)
            .map(|i| a[i] as i8 as i32 * b[i] as i8 as i32)
            .sum::<i32>()
    }

    fn dot16(w: &[i32; 4], a: &[i32; 4]) -> i32 {
        (0..4).fold(0, |c, k| dp4a(w[k], a[k], c))
    }

    fn sub_bytes(w: u32, s: u32) -> i32 {
        (((w | 0x8080_8080).wrapping_sub(s.wrapping_mul(0x0101_0101))) ^ 0x8080_8080) as i32
    }

    fn h(b: &[u8]) -> f32 {
        half::f16::from_le_bytes([b[0], b[1]]).to_f32()
    }

    /// One row's product by the reference: dequantized weights times dequantized activations.
    fn reference(ty: GgmlType, row: &[u8], x_blocks: &[u8], cols: usize) -> f64 {
        let mut w = vec![0f32; cols];
        quant::dequantize(ty, row, &mut w).unwrap();
        let act_ty = if act_fmt(ty) == Some(ActFmt::A256) {
            GgmlType::Q8_K
        } else {
            GgmlType::Q8_1
        };
        let mut a = vec![0f32; cols];
        if act_ty == GgmlType::Q8_1 {
            // Q8_1 blocks: d, s, codes
            for (i, blk) in x_blocks.chunks_exact(36).enumerate() {
                for j in 0..32 {
                    a[32 * i + j] = h(blk) * blk[4 + j] as i8 as f32;
                }
            }
        } else {
            quant::dequantize(act_ty, x_blocks, &mut a).unwrap();
        }
        w.iter().zip(&a).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    #[test]
    fn q6_k_repacked_kernel_math_matches_the_reference() {
        let mut r = Rng(0x1234_5678);
        let (rows, cols) = (3, 1024);
        let w = weights(GgmlType::Q6_K, rows, cols, &mut r);
        let x: Vec<f32> = (0..cols).map(|_| r.f()).collect();
        let mut xq = vec![0u8; cols / 256 * Q8_K_BYTES];
        quant::quantize_q8_k(&x, &mut xq);
        let rp = repack(GgmlType::Q6_K, &w, rows, cols);
        let (nb, stride, rb) = (
            cols / 256,
            repacked_row_bytes(GgmlType::Q6_K, cols),
            cols / 256 * 210,
        );
        assert_eq!(stride % 16, 0);
        for row in 0..rows {
            let wr = &rp[row * stride..];
            let mut acc = 0f64;
            for u in 0..4 * nb {
                let (b, hh, g) = (u >> 2, (u >> 1) & 1, u & 1);
                let unit = &wr[48 * u..];
                let (q0, q1, qh) = (
                    i8x16(&unit[..16]),
                    i8x16(&unit[16..32]),
                    i8x16(&unit[32..48]),
                );
                let mut c = [[0i32; 4]; 4];
                for k in 0..4 {
                    let (w0, v0, hb) = (q0[k] as u32, q1[k] as u32, qh[k] as u32);
                    c[0][k] = sub_bytes((w0 & 0x0F0F0F0F) | ((hb & 0x03030303) << 4), 32);
                    c[1][k] = sub_bytes((v0 & 0x0F0F0F0F) | (((hb >> 2) & 0x03030303) << 4), 32);
                    c[2][k] = sub_bytes(
                        ((w0 >> 4) & 0x0F0F0F0F) | (((hb >> 4) & 0x03030303) << 4),
                        32,
                    );
                    c[3][k] = sub_bytes(
                        ((v0 >> 4) & 0x0F0F0F0F) | (((hb >> 6) & 0x03030303) << 4),
                        32,
                    );
                }
                let scv = &wr[nb * 192 + 16 * b + 8 * hh..][..8];
                let sc = [scv[g], scv[g + 2], scv[4 + g], scv[4 + g + 2]].map(|v| v as i8 as i32);
                let dw = h(&wr[nb * 208 + 2 * b..]);
                let e0 = b * 256 + 128 * hh + 16 * g;
                let blk = &xq[b * Q8_K_BYTES..];
                let da = f32::from_le_bytes(blk[..4].try_into().unwrap());
                let mut isum = 0;
                for s in 0..4 {
                    let off = e0 + 32 * s - b * 256;
                    isum += sc[s] * dot16(&c[s], &i8x16(&blk[4 + off..4 + off + 16]));
                }
                acc += (dw * da) as f64 * isum as f64;
            }
            let want = reference(GgmlType::Q6_K, &w[row * rb..(row + 1) * rb], &xq, cols);
            assert!(
                (acc - want).abs() <= 1e-4 * want.abs().max(1.0),
                "row {row}: {acc} vs {want}"
            );
        }
    }

    #[test]
    fn q4_k_unit_math_matches_the_reference() {
        let mut r = Rng(0x9abc_def1);
        let (rows, cols) = (3, 768);
        let w = weights(GgmlType::Q4_K, rows, cols, &mut r);
        let x: Vec<f32> = (0..cols).map(|_| r.f()).collect();
        let mut xq = vec![0u8; cols / 256 * Q8_K_BYTES];
        quant::quantize_q8_k(&x, &mut xq);
        let nb = cols / 256;
        let byte_of = |w: u32, k: usize| ((w >> (8 * k)) & 0xFF) as i32;
        for row in 0..rows {
            let wr = &w[row * nb * 144..];
            let mut acc = 0f64;
            for u in 0..nb * 4 {
                let (b, p) = (u >> 2, u & 3);
                let blk = &wr[b * 144..];
                let hd = i8x16(&blk[..16]).map(|v| v as u32);
                let q0 = i8x16(&blk[16 + 32 * p..]).map(|v| v as u32);
                let q1 = i8x16(&blk[32 + 32 * p..]).map(|v| v as u32);
                let sm = |j: usize| {
                    let k = j & 3;
                    if j < 4 {
                        (byte_of(hd[1], k) & 63, byte_of(hd[2], k) & 63)
                    } else {
                        (
                            (byte_of(hd[3], k) & 15) | ((byte_of(hd[1], k) >> 6) << 4),
                            (byte_of(hd[3], k) >> 4) | ((byte_of(hd[2], k) >> 6) << 4),
                        )
                    }
                };
                let ((s0, m0), (s1, m1)) = (sm(2 * p), sm(2 * p + 1));
                let d = half::f16::from_bits(hd[0] as u16).to_f32();
                let dmin = half::f16::from_bits((hd[0] >> 16) as u16).to_f32();
                let lo = |q: [u32; 4]| q.map(|v| (v & 0x0F0F0F0F) as i32);
                let hi = |q: [u32; 4]| q.map(|v| ((v >> 4) & 0x0F0F0F0F) as i32);
                let xb = &xq[b * Q8_K_BYTES..];
                let off = 64 * p;
                let x = |o: usize| i8x16(&xb[4 + off + o..]);
                let dl = dot16(&lo(q0), &x(0)) + dot16(&lo(q1), &x(16));
                let dh = dot16(&hi(q0), &x(32)) + dot16(&hi(q1), &x(48));
                let bs = |g: usize| i16::from_le_bytes([xb[260 + 2 * g], xb[261 + 2 * g]]) as i32;
                let g0 = off >> 4;
                let (b0, b1) = (bs(g0) + bs(g0 + 1), bs(g0 + 2) + bs(g0 + 3));
                let da = f32::from_le_bytes(xb[..4].try_into().unwrap());
                let f = d * (s0 * dl + s1 * dh) as f32 - dmin * (m0 * b0 + m1 * b1) as f32;
                acc += (da * f) as f64;
            }
            let want = reference(
                GgmlType::Q4_K,
                &w[row * nb * 144..(row + 1) * nb * 144],
                &xq,
                cols,
            );
            assert!(
                (acc - want).abs() <= 1e-4 * want.abs().max(1.0),
                "row {row}: {acc} vs {want}"
            );
        }
    }

    /// A repacked A32-pair type's kernel math, one block at a time, against the reference dot:
    /// `unit` gives block `u` of a repacked row (`nb` blocks) as the two 16-value halves of its
    /// signed codes and its scale, as the kernel decodes them.
    fn check_repacked_a32(
        ty: GgmlType,
        seed: u64,
        unit: impl Fn(&[u8], usize, usize) -> ([i32; 4], [i32; 4], f32),
    ) {
        let mut r = Rng(seed);
        let (rows, cols) = (5, 96);
        let w = weights(ty, rows, cols, &mut r);
        let x: Vec<f32> = (0..cols).map(|_| r.f()).collect();
        let mut xq = vec![0u8; cols / 32 * Q8_1_BYTES];
        quant::quantize_q8_1(&x, &mut xq);
        let rp = repack(ty, &w, rows, cols);
        let (nb, stride) = (cols / 32, repacked_row_bytes(ty, cols));
        let block_bytes = ty.row_bytes(32).unwrap() as usize;
        for row in 0..rows {
            let wr = &rp[row * stride..];
            let mut acc = 0f64;
            for u in 0..nb {
                let (q0, q1, dw) = unit(wr, nb, u);
                let blk = &xq[u * Q8_1_BYTES..];
                let i = dot16(&q0, &i8x16(&blk[4..])) + dot16(&q1, &i8x16(&blk[20..]));
                acc += (dw * h(blk)) as f64 * i as f64;
            }
            let bytes = nb * block_bytes;
            let want = reference(ty, &w[row * bytes..(row + 1) * bytes], &xq, cols);
            assert!(
                (acc - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{ty} row {row}: {acc} vs {want}"
            );
        }
    }

    #[test]
    fn q8_0_repacked_kernel_math_matches_the_reference() {
        // Per row: every block's 32 codes, then every block's f16 scale.
        check_repacked_a32(GgmlType::Q8_0, 0x5555_aaaa, |wr, nb, u| {
            let (q0, q1) = (i8x16(&wr[32 * u..]), i8x16(&wr[32 * u + 16..]));
            (q0, q1, h(&wr[nb * 32 + 2 * u..]))
        });
    }

    #[test]
    fn q4_0_repacked_kernel_math_matches_the_reference() {
        // Per row: every block's 16 nibble bytes (low nibbles first half), then the scales.
        check_repacked_a32(GgmlType::Q4_0, 0x7777_1111, |wr, nb, u| {
            let q = i8x16(&wr[16 * u..]).map(|v| v as u32);
            let lo = q.map(|v| sub_bytes(v & 0x0F0F0F0F, 8));
            let hi = q.map(|v| sub_bytes((v >> 4) & 0x0F0F0F0F, 8));
            (lo, hi, h(&wr[nb * 16 + 2 * u..]))
        });
    }

    #[test]
    fn repack_is_a_permutation_of_each_row() {
        let mut r = Rng(7);
        for (ty, cols) in [
            (GgmlType::Q6_K, 512),
            (GgmlType::Q8_0, 160),
            (GgmlType::Q4_0, 160),
        ] {
            let rows = 2100; // more than one thread's share
            let w = weights(ty, rows, cols, &mut r);
            let rp = repack(ty, &w, rows, cols);
            let (rb, stride) = (
                ty.row_bytes(cols as u64).unwrap() as usize,
                repacked_row_bytes(ty, cols),
            );
            assert_eq!(rp.len(), rows * stride);
            for row in [0, 1, 1023, 1024, rows - 1] {
                let mut a = w[row * rb..(row + 1) * rb].to_vec();
                let mut b = rp[row * stride..row * stride + rb].to_vec();
                a.sort_unstable();
                b.sort_unstable();
                assert_eq!(a, b, "{ty} row {row}");
            }
        }
    }

    #[test]
    fn layouts_are_aligned_and_sized() {
        for fmt in [ActFmt::A32, ActFmt::A256] {
            for (n, k) in [(1, 256), (3, 768), (8, 14336)] {
                let l = fmt.layout(n, k);
                assert_eq!(l.d % 16, 0);
                assert_eq!(l.s % 16, 0);
                assert!(l.bytes >= l.s);
                assert!(ActFmt::max_bytes(n, k) >= l.bytes);
            }
        }
    }
}
