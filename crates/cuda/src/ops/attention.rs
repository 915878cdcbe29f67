//! KV-cache writes (kernels/kv.cu) and paged attention. Runs of many query tokens of one
//! sequence (prompts, chunks of prompts) take the tensor-core flash-attention kernel
//! (kernels/attention_prefill.cu); the other tokens the decode kernels (kernels/attention.cu),
//! chosen per token by its own context: up to `EXACT_KEYS` keys the CPU's exact f16 chain, beyond
//! it flash-decoding (`token_splits` key splits per token, all query heads of a KV head in one
//! block: on tensor cores, `attn_fdt_*`, at head dims 64/128/256, else in f32 FMAs, `attn_fd_*`)
//! and an ordered combine of the splits.

use kestrel_engine::{AttnGeom, Chunk};

use crate::backend::{Arg, CudaBackend, CudaKv, CudaStep, CudaTensor};

/// Largest head_dim the attention kernels take (their shared-memory staging; `fd_heads`).
pub const MAX_HEAD_DIM: usize = 512;

/// Tokens with at most this many keys take the exact-chain kernel (kernels/attention.cu
/// `attention_d*`): the CPU's arithmetic, one f16 accumulation chain over the keys in order, so
/// short contexts (and every model test that compares op by op with the CPU) keep its bits. It
/// is also fast there: 128 keys are one or two tiles of one block per head. Longer contexts
/// take flash-decoding (`attn_fd_*`, f32).
pub const EXACT_KEYS: usize = 128;
/// How flash-decoding runs (`CudaBackend::set_fd_tune`; `KESTREL_CUDA_FD_TC=0`,
/// `KESTREL_CUDA_FD_SPLITS=N`). For tests and measurements.
#[derive(Clone, Copy, Debug)]
pub struct FdTune {
    /// `attn_fdt_*` (tensor cores) where the head dim has one, else `attn_fd_*` throughout.
    pub tensor_cores: bool,
    /// Split cap instead of the kernel's default (`fdt_cap`, `MAX_SPLITS`).
    pub cap: Option<usize>,
}

/// Flash-decoding splits take whole rounds of this many keys (kernels/attention.cu
/// `fd_splits`): one tile of `attn_fd_*` (at hd 128; two or four at 256 and 512), one pass of
/// the 4 warps of `attn_fdt_*` (16 keys each), so no split ends in a sliver of a tile. Below it
/// a split's fixed costs (loading Q, writing its partial) outweigh its keys.
pub const FD_UNIT: usize = 64;
/// Most flash-decoding splits (kernels/attention.cu `ATT_MAX_SPLITS`, the combine's limit) and
/// the cap of `attn_fd_*`: 128 × 8 KV heads fill the 132 SMs of an H100/H200 about 8 times over
/// at batch 1.
pub const MAX_SPLITS: usize = 128;

/// Splits of a token that attends to `n_keys` keys when a split takes at most `cap` (kernels/
/// attention.cu `fd_splits`): its keys in rounds of `FD_UNIT`, as few rounds per split as keep
/// the count within `cap`, every split non-empty. A function of its own context (and of the
/// layer's cap, fixed per model and device) alone, so its bits do not depend on the step (batch
/// invariance); 1 where it takes the exact kernel.
pub fn token_splits(n_keys: usize, cap: usize) -> usize {
    if n_keys <= EXACT_KEYS {
        return 1;
    }
    let rounds = n_keys.div_ceil(FD_UNIT);
    let per_split = rounds.div_ceil(rounds.min(cap));
    rounds.div_ceil(per_split)
}

/// grid.z of the flash-decoding launch for a step whose longest context is `max_keys` keys, at
/// split cap `cap`: at least every token's `token_splits` (which never exceeds min(cap, rounds),
/// monotonic in the context), rounded to a power of two so a growing context records a new
/// graph only at each doubling (blocks beyond a token's own splits return at once).
pub fn fd_grid(max_keys: usize, cap: usize) -> usize {
    if max_keys <= EXACT_KEYS {
        return 1;
    }
    max_keys
        .div_ceil(FD_UNIT)
        .min(cap)
        .min(MAX_SPLITS)
        .next_power_of_two()
}

/// `fd_grid` at the widest cap: an upper bound on any layer's grid (room for the partials) that
/// determines the grid at every smaller cap (min(cap, r) rounded up to a power of two follows
/// min(`MAX_SPLITS`, r)'s), so it serves as the graph key.
pub fn splits(max_keys: usize) -> usize {
    fd_grid(max_keys, MAX_SPLITS)
}

/// What a step's decode attention launches, for the graph key: the flash grid times 2, plus 1
/// when some token may take the exact kernel (the shortest context has at most `EXACT_KEYS`
/// keys; windows of at most that are per layer, fixed).
pub fn launch_key(min_keys: usize, max_keys: usize) -> usize {
    2 * splits(max_keys) + usize::from(min_keys <= EXACT_KEYS)
}

/// Query heads one flash-decoding block takes: the largest divisor of the GQA group up to 8
/// (kernels/attention.cu `FD_MAXG`) whose f32 Q fits the block's 2048 floats (`FD_QS`; 4 heads
/// at hd 512), so K/V rows are read once per block for all of them.
pub fn fd_heads(group: usize, head_dim: usize) -> usize {
    (1..=group.min(8))
        .rev()
        .find(|d| group.is_multiple_of(*d) && d * head_dim <= 2048)
        .unwrap_or(1)
}

/// Runs shorter than this many query tokens take the decode kernel. Measured on the H200
/// (docs/benchmarks/cuda-prefill-attention.md, qwen3-8b shapes): after 512 cached keys the two
/// kernels tie at 4 tokens, after 4096 the decode kernel still wins at 4 (its key splits fill
/// the GPU; a prefill tile walks all keys in one block) and loses from 8 on.
pub const PREFILL_MIN_TOKENS: usize = 8;

/// One compiled configuration of the prefill kernel (kernels/attention_prefill.cu
/// `attn_prefill_<hd>_<dc>_<bn>_<rg>x<nw>`).
#[derive(Clone, Copy, Debug)]
pub struct PrefillCfg {
    pub name: &'static str,
    pub head_dim: usize,
    /// Output dims per block (blockIdx.z chunks: S is recomputed per chunk).
    pub dc: usize,
    /// Keys per tile.
    pub bn: usize,
    /// 16-row groups per warp.
    pub rg: usize,
    /// Warps per block (a tile is 16 × rg × nw rows: tokens × grouped heads).
    pub nw: usize,
    /// Chosen only when its grid has at least this many blocks per SM (`prefill_cfg`).
    pub min_waves: usize,
}

impl PrefillCfg {
    pub fn rows(&self) -> usize {
        16 * self.rg * self.nw
    }
    pub fn threads(&self) -> u32 {
        32 * self.nw as u32
    }
    /// Dynamic shared memory: the Q tile and two stages of K and V tiles, rows padded by 8
    /// halves.
    pub fn smem(&self) -> usize {
        let hd = self.head_dim;
        2 * (self.rows() * (hd + 8) + 2 * self.bn * (hd + 8) + 2 * self.bn * (self.dc + 8))
    }
}

const fn cfg(
    name: &'static str,
    (head_dim, dc, bn): (usize, usize, usize),
    (rg, nw): (usize, usize),
    min_waves: usize,
) -> PrefillCfg {
    PrefillCfg {
        name,
        head_dim,
        dc,
        bn,
        rg,
        nw,
        min_waves,
    }
}

/// Every compiled configuration, per head dim from the most rows per block to the fewest; a
/// step takes the first whose grid has `min_waves` blocks per SM. 4 warps of 16 rows is the
/// base; 32 rows per warp (each K/V fragment read from shared memory feeds twice the MMAs)
/// pays on large grids: a 4096-token qwen3-8b prompt in one pass, 1024 blocks, 821 µs against
/// 969, but a 512-token chunk, 128 blocks, 41 µs against 36 (H200,
/// docs/benchmarks/cuda-prefill-attention.md). Measured and dropped: 2-warp blocks for small
/// grids (2.0-2.9× slower: the K/V stages, not the rows, fill the shared memory, so an SM holds
/// as few blocks as before with half the warps), 32-key tiles at hd 128, 64-key tiles at hd 256,
/// 16-key tiles at hd 512.
pub const PREFILL_CFGS: [PrefillCfg; 6] = [
    cfg("attn_prefill_64_64_64_2x4", (64, 64, 64), (2, 4), 4),
    cfg("attn_prefill_64_64_64_1x4", (64, 64, 64), (1, 4), 0),
    cfg("attn_prefill_128_128_64_2x4", (128, 128, 64), (2, 4), 4),
    cfg("attn_prefill_128_128_64_1x4", (128, 128, 64), (1, 4), 0),
    cfg("attn_prefill_256_256_32_1x4", (256, 256, 32), (1, 4), 0),
    cfg("attn_prefill_512_256_32_1x4", (512, 256, 32), (1, 4), 0),
];

/// The configurations for a head dim, most rows first (empty: no prefill kernel for it).
pub fn prefill_cfgs(head_dim: usize) -> Vec<PrefillCfg> {
    PREFILL_CFGS
        .iter()
        .filter(|c| c.head_dim == head_dim)
        .copied()
        .collect()
}

/// Query tiles of the step's prefill runs for `c`: per run ceil(len / tokens per tile).
fn n_tiles(c: &PrefillCfg, group: usize, lens: &[u32]) -> usize {
    let tpt = c.rows() / group;
    lens.iter().map(|&l| (l as usize).div_ceil(tpt)).sum()
}

/// Static shared memory of the prefill kernels (row tables), with room to spare.
pub(crate) const PREFILL_STATIC_SMEM: usize = 1024;

/// Split a step's tokens into prefill runs and decode tokens. A run is a stretch of consecutive
/// tokens of one sequence at consecutive positions; with `chunks` (the engine's `StepInfo::chunks`,
/// one per token) it is also cut where a chunk starts, and a token prefills when its chunk has at
/// least `min` tokens — so the kernel a token takes, and with it its bits, depends on its own chunk
/// and not on what shares the step. Without chunks, runs of at least `min` tokens prefill.
/// Returns the prefill runs as (first token, count) and every other token's index.
pub fn split_runs(
    positions: &[u32],
    seq_index: &[u32],
    chunks: &[Chunk],
    min: usize,
) -> (Vec<(u32, u32)>, Vec<u32>) {
    let n = positions.len();
    let chunks = (chunks.len() == n).then_some(chunks);
    let (mut runs, mut decode) = (Vec::new(), Vec::new());
    let mut t = 0;
    while t < n {
        let mut e = t + 1;
        while e < n
            && seq_index[e] == seq_index[t]
            && positions[e] == positions[e - 1] + 1
            && chunks.is_none_or(|c| c[e].index != 0 && c[e].len == c[t].len)
        {
            e += 1;
        }
        let long = match chunks {
            Some(c) => c[t].len as usize >= min,
            None => e - t >= min,
        };
        if long {
            runs.push((t as u32, (e - t) as u32));
        } else {
            decode.extend(t as u32..e as u32);
        }
        t = e;
    }
    (runs, decode)
}

pub fn kv_write(b: &CudaBackend, k: &CudaTensor, v: &CudaTensor, kv: &mut CudaKv, step: &CudaStep) {
    assert_eq!(
        k.cols, kv.kv_dim,
        "kv_write: K has {} columns, the pool {}",
        k.cols, kv.kv_dim
    );
    assert_eq!(
        v.cols, kv.kv_dim,
        "kv_write: V has {} columns, the pool {}",
        v.cols, kv.kv_dim
    );
    let n = step.n_tokens.min(k.rows);
    if n == 0 {
        return;
    }
    let threads = 256u32;
    b.launch_w(
        "kv_write",
        ((kv.kv_dim.div_ceil(threads as usize)) as u32, n as u32, 1),
        (threads, 1, 1),
        0,
        &[
            Arg::Ptr(k.ptr),
            Arg::Ptr(v.ptr),
            Arg::Ptr(kv.k),
            Arg::Ptr(kv.v),
            Arg::Ptr(step.slots),
            Arg::I32(kv.kv_dim as i32),
        ],
        (kv.k, 0), // the KV pools hold no matmul input
    );
}

pub fn attention(
    b: &CudaBackend,
    q: &CudaTensor,
    kv: &CudaKv,
    g: AttnGeom,
    step: &CudaStep,
    out: &mut CudaTensor,
) {
    assert!(
        g.head_dim <= MAX_HEAD_DIM && g.head_dim.is_multiple_of(8),
        "attention: head_dim {} (the kernel takes multiples of 8 up to {MAX_HEAD_DIM})",
        g.head_dim
    );
    assert!(
        g.n_kv_head > 0 && g.n_head.is_multiple_of(g.n_kv_head),
        "attention: {} heads, {} kv heads",
        g.n_head,
        g.n_kv_head
    );
    assert_eq!(
        q.cols,
        g.n_head * g.head_dim,
        "attention: q has {} columns",
        q.cols
    );
    assert_eq!(
        out.len(),
        q.len(),
        "attention: out {} vs q {}",
        out.len(),
        q.len()
    );
    assert_eq!(
        kv.kv_dim,
        g.n_kv_head * g.head_dim,
        "attention: pool kv_dim {}",
        kv.kv_dim
    );
    let n = step.n_tokens.min(q.rows);
    if n == 0 {
        return;
    }
    let group = g.n_head / g.n_kv_head;
    let fits =
        |c: &&PrefillCfg| group <= c.rows() && c.smem() + PREFILL_STATIC_SMEM <= b.smem_optin();
    let cfgs = prefill_cfgs(g.head_dim);
    let prefill = match b.prefill_variant() {
        Some(i) => cfgs.get(i),
        None => cfgs.iter().filter(fits).find(|c| {
            let blocks = n_tiles(c, group, &step.prefill_lens) * g.n_kv_head * (g.head_dim / c.dc);
            blocks >= c.min_waves * b.sm_count()
        }),
    }
    .filter(fits)
    .filter(|_| !step.prefill_lens.is_empty());
    let Some(c) = prefill else {
        decode(b, q, kv, g, step, out, n, 0);
        return;
    };
    assert!(
        q.rows >= step.n_tokens,
        "attention: q has {} rows for {} tokens",
        q.rows,
        step.n_tokens
    );
    // Query tiles: `tpt` tokens × `group` heads.
    let tpt = c.rows() / group;
    let n_tiles = n_tiles(c, group, &step.prefill_lens);
    b.launch_w(
        c.name,
        (
            n_tiles as u32,
            g.n_kv_head as u32,
            (g.head_dim / c.dc) as u32,
        ),
        (c.threads(), 1, 1),
        c.smem() as u32,
        &[
            Arg::Ptr(q.ptr),
            Arg::Ptr(kv.k),
            Arg::Ptr(kv.v),
            Arg::Ptr(out.ptr),
            Arg::Ptr(step.positions),
            Arg::Ptr(step.seq_index),
            Arg::Ptr(step.bt_off),
            Arg::Ptr(step.bt_flat),
            Arg::Ptr(step.prefill_runs),
            Arg::I32(step.prefill_lens.len() as i32),
            Arg::I32(n_tiles as i32),
            Arg::I32(tpt as i32),
            Arg::I32(g.n_head as i32),
            Arg::I32(g.n_kv_head as i32),
            Arg::I32(kv.kv_dim as i32),
            Arg::I32(g.window.map_or(0, |w| w as i32)),
            Arg::F32(g.scale),
        ],
        (out.ptr, out.len() * 4),
    );
    if step.n_decode > 0 {
        decode(b, q, kv, g, step, out, step.n_decode, step.decode_rows);
    }
}

/// The tensor-core flash-decoding kernel for a head dim (kernels/attention.cu `attn_fdt_<hd>`)
/// and its dynamic shared memory: 4 warps × 2 stages × (16 K + 16 V rows of hd + 8 halves).
/// Other head dims take `attn_fd_*` (hd 512 would need 128 accumulators a thread).
pub fn fdt_kernel(head_dim: usize) -> Option<(&'static str, usize)> {
    let name = match head_dim {
        64 => "attn_fdt_64",
        128 => "attn_fdt_128",
        256 => "attn_fdt_256",
        _ => return None,
    };
    Some((name, 4 * 2 * 2 * 16 * (head_dim + 8) * 2))
}

/// Static shared memory of `attn_fdt_*` (the warps' maxima and sums), with room to spare.
pub(crate) const FDT_STATIC_SMEM: usize = 1024;

/// Every `attn_fdt_*` kernel's (name, dynamic shared memory), for the backend to opt in.
pub fn fdt_kernels() -> Vec<(&'static str, usize)> {
    [64, 128, 256].into_iter().filter_map(fdt_kernel).collect()
}

/// Split cap of `attn_fdt_*` for a layer: one block per SM at batch 1 (splits × KV heads ≈ SMs),
/// so each block streams a long run of keys through its warps' pipelines. Measured on the H200
/// (qwen3-8b, 16448 keys, docs/benchmarks/cuda-decode.md): 27.0 µs at 16 splits, 28.2 at 32,
/// 29.8 at 49 (3 blocks per SM), 35.8 at 128; batch 16 orders them the same way.
pub fn fdt_cap(sm_count: usize, n_kv_head: usize) -> usize {
    (sm_count / n_kv_head.max(1)).clamp(1, MAX_SPLITS)
}

/// The decode kernels over `n` tokens: the first `n` of the step, or those listed at `rows`.
/// Each token takes the exact kernel or flash-decoding by its own number of keys (both are
/// launched when the step may hold both kinds; each returns at once for the other's tokens).
#[allow(clippy::too_many_arguments)]
fn decode(
    b: &CudaBackend,
    q: &CudaTensor,
    kv: &CudaKv,
    g: AttnGeom,
    step: &CudaStep,
    out: &mut CudaTensor,
    n: usize,
    rows: u64,
) {
    let window = g.window.filter(|&w| w > 0);
    let short_window = window.is_some_and(|w| w <= EXACT_KEYS);
    let win = window.map_or(0, |w| w as i32);
    if step.min_keys <= EXACT_KEYS || short_window {
        let kernel = match g.head_dim {
            0..=128 => "attention_d1",
            129..=256 => "attention_d2",
            _ => "attention_d4",
        };
        b.launch_w(
            kernel,
            (g.n_head as u32, n as u32, 1),
            (128, 1, 1),
            0,
            &[
                Arg::Ptr(q.ptr),
                Arg::Ptr(kv.k),
                Arg::Ptr(kv.v),
                Arg::Ptr(out.ptr),
                Arg::Ptr(step.positions),
                Arg::Ptr(step.seq_index),
                Arg::Ptr(step.bt_off),
                Arg::Ptr(step.bt_flat),
                Arg::I32(g.n_head as i32),
                Arg::I32(g.n_kv_head as i32),
                Arg::I32(g.head_dim as i32),
                Arg::I32(kv.kv_dim as i32),
                Arg::I32(win),
                Arg::F32(g.scale),
                Arg::I32(EXACT_KEYS as i32),
                Arg::Ptr(rows),
            ],
            (out.ptr, out.len() * 4),
        );
    }
    if step.max_keys <= EXACT_KEYS || short_window {
        return;
    }
    let gb = fd_heads(g.n_head / g.n_kv_head, g.head_dim);
    let tune = b.fd_tune();
    let tc = fdt_kernel(g.head_dim)
        .filter(|&(_, smem)| tune.tensor_cores && smem + FDT_STATIC_SMEM <= b.smem_optin());
    let (kernel, smem, cap) = match tc {
        Some((name, smem)) => (
            name,
            smem,
            tune.cap
                .unwrap_or_else(|| fdt_cap(b.sm_count(), g.n_kv_head)),
        ),
        // Pairs of output dims per thread (the f32 accumulator): gb × hd / 256.
        None => (
            match (gb * g.head_dim).div_ceil(256) {
                0..=1 => "attn_fd_1",
                2 => "attn_fd_2",
                3..=4 => "attn_fd_4",
                _ => "attn_fd_8",
            },
            0,
            tune.cap.unwrap_or(MAX_SPLITS),
        ),
    };
    let cap = cap.clamp(1, MAX_SPLITS);
    let zmax = fd_grid(step.max_keys, cap);
    // Partials are indexed by token, so with a row list they cover the whole step.
    let n_part = if rows == 0 { n } else { step.n_tokens };
    let part = b.scratch(n_part * g.n_head * zmax * (g.head_dim + 2) * 4);
    b.launch_w(
        kernel,
        ((g.n_head / gb) as u32, n as u32, zmax as u32),
        (128, 1, 1),
        smem as u32,
        &[
            Arg::Ptr(q.ptr),
            Arg::Ptr(kv.k),
            Arg::Ptr(kv.v),
            Arg::Ptr(part.ptr),
            Arg::Ptr(step.positions),
            Arg::Ptr(step.seq_index),
            Arg::Ptr(step.bt_off),
            Arg::Ptr(step.bt_flat),
            Arg::I32(g.n_head as i32),
            Arg::I32(g.n_kv_head as i32),
            Arg::I32(gb as i32),
            Arg::I32(g.head_dim as i32),
            Arg::I32(kv.kv_dim as i32),
            Arg::I32(win),
            Arg::F32(g.scale),
            Arg::I32(EXACT_KEYS as i32),
            Arg::I32(FD_UNIT as i32),
            Arg::I32(cap as i32),
            Arg::I32(zmax as i32),
            Arg::Ptr(rows),
        ],
        (part.ptr, part.len() * 4),
    );
    b.launch_w(
        "attention_combine",
        (g.n_head as u32, n as u32, 1),
        (128, 1, 1),
        0,
        &[
            Arg::Ptr(part.ptr),
            Arg::Ptr(out.ptr),
            Arg::Ptr(step.positions),
            Arg::I32(g.n_head as i32),
            Arg::I32(g.head_dim as i32),
            Arg::I32(win),
            Arg::I32(EXACT_KEYS as i32),
            Arg::I32(FD_UNIT as i32),
            Arg::I32(cap as i32),
            Arg::I32(zmax as i32),
            Arg::Ptr(rows),
        ],
        (out.ptr, out.len() * 4),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_by_sequence_position_and_length() {
        // Sequence 0: a 5-token chunk at 10..15; sequence 1: one decode token; sequence 2: a
        // 3-token chunk; sequence 0 again after a gap (a new run).
        let pos = [10, 11, 12, 13, 14, 40, 0, 1, 2, 20, 21];
        let seq = [0, 0, 0, 0, 0, 1, 2, 2, 2, 0, 0];
        let (runs, dec) = split_runs(&pos, &seq, &[], 3);
        assert_eq!(runs, vec![(0, 5), (6, 3)]);
        assert_eq!(dec, vec![5, 9, 10]);
        let (runs, dec) = split_runs(&pos, &seq, &[], 1);
        assert_eq!(runs, vec![(0, 5), (5, 1), (6, 3), (9, 2)]);
        assert!(dec.is_empty());
        let (runs, dec) = split_runs(&pos, &seq, &[], usize::MAX);
        assert!(runs.is_empty());
        assert_eq!(dec.len(), pos.len());
    }

    #[test]
    fn runs_follow_the_engine_chunks() {
        // One sequence: the last 3 tokens of a 7-token chunk at 0..7 (the engine split it over
        // steps), then a whole 4-token chunk at 7..11 — consecutive, but separate runs, each
        // prefilled by its own chunk's length; then a decode token of another sequence.
        let c = |len, index| Chunk { len, index };
        let pos = [4, 5, 6, 7, 8, 9, 10, 30];
        let seq = [0, 0, 0, 0, 0, 0, 0, 1];
        let chunks = [
            c(7, 4),
            c(7, 5),
            c(7, 6),
            c(4, 0),
            c(4, 1),
            c(4, 2),
            c(4, 3),
            Chunk::SINGLE,
        ];
        let (runs, dec) = split_runs(&pos, &seq, &chunks, 5);
        assert_eq!(runs, vec![(0, 3)]);
        assert_eq!(dec, vec![3, 4, 5, 6, 7]);
        let (runs, dec) = split_runs(&pos, &seq, &chunks, 4);
        assert_eq!(runs, vec![(0, 3), (3, 4)]);
        assert_eq!(dec, vec![7]);
    }

    #[test]
    fn decode_splits_cover_every_token_of_the_step() {
        // Each token's splits fit the grid sized for the longest context at any cap, and are
        // whole rounds of FD_UNIT keys, every split non-empty, as few rounds each as the cap
        // allows.
        for cap in [1usize, 16, 32, 49, 64, 99, 128] {
            for max in [
                1usize,
                128,
                129,
                500,
                4096,
                8129,
                16384,
                16385,
                20000,
                1 << 20,
            ] {
                let z = fd_grid(max, cap);
                assert!(z.is_power_of_two() && z <= MAX_SPLITS, "{max}: {z}");
                assert!(z <= splits(max));
                for n in [1, 64, 128, 129, 192, 1000, max / 2, max - 1, max] {
                    let n = n.clamp(1, max);
                    let s = token_splits(n, cap);
                    assert!(
                        s <= z && s <= cap,
                        "{n} keys cap {cap}: {s} splits, grid {z}"
                    );
                    if n > EXACT_KEYS {
                        let rounds = n.div_ceil(FD_UNIT);
                        let per = rounds.div_ceil(rounds.min(cap));
                        assert_eq!(s, rounds.div_ceil(per), "{n} keys cap {cap}");
                        assert!(
                            per * FD_UNIT * (s - 1) < n,
                            "{n} keys cap {cap}: an empty split"
                        );
                        assert!(
                            per == 1 || rounds.div_ceil(per - 1) > cap,
                            "{n} keys cap {cap}"
                        );
                    }
                }
            }
        }
        assert_eq!(token_splits(EXACT_KEYS, MAX_SPLITS), 1);
        assert_eq!(token_splits(EXACT_KEYS + 1, MAX_SPLITS), 3);
        // 16385 keys at cap 128: 257 rounds, 3 a split, 86 splits (no 1-key third tile).
        assert_eq!(token_splits(16385, 128), 86);
        // The graph key tells apart steps that launch the exact kernel and those that do not.
        assert_ne!(launch_key(5000, 5000), launch_key(5, 5000));
        for (group, hd) in [
            (1, 128),
            (4, 128),
            (8, 128),
            (16, 128),
            (8, 512),
            (6, 96),
            (8, 256),
        ] {
            let gb = fd_heads(group, hd);
            assert!(
                group.is_multiple_of(gb) && gb <= 8 && gb * hd <= 2048,
                "{group} {hd}: {gb}"
            );
        }
        assert_eq!(fd_heads(8, 512), 4);
        assert_eq!(fd_heads(16, 128), 8);
    }

    #[test]
    fn prefill_tiles_fit_the_h100_h200_shared_memory() {
        for c in PREFILL_CFGS {
            assert!(
                c.smem() + PREFILL_STATIC_SMEM <= 227 * 1024,
                "{}: {} bytes",
                c.name,
                c.smem()
            );
            assert!(c.head_dim.is_multiple_of(c.dc) && c.bn.is_multiple_of(16));
        }
        for hd in [64, 128, 256, 512] {
            // Some configuration is always chosen: the last needs no blocks at all.
            let c = prefill_cfgs(hd);
            assert_eq!(c.last().map(|c| c.min_waves), Some(0), "hd {hd}");
            assert!(c.windows(2).all(|w| w[0].rows() > w[1].rows()));
        }
        let m = crate::kernels::MODULES
            .iter()
            .find(|m| m.name == "attention_prefill")
            .expect("module");
        assert_eq!(m.functions, PREFILL_CFGS.map(|c| c.name));
    }
}
