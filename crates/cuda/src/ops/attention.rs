//! KV-cache writes (kernels/kv.cu) and paged attention. Runs of many query tokens of one
//! sequence (prompts, chunks of prompts) take the tensor-core flash-attention kernel
//! (kernels/attention_prefill.cu); the other tokens the decode kernel (kernels/attention.cu): one
//! launch of `n_splits` key splits per (head, token), plus a combine launch when there are
//! several.

use kestrel_engine::AttnGeom;

use crate::backend::{Arg, CudaBackend, CudaKv, CudaStep, CudaTensor};

/// Largest head_dim the attention kernel takes (its per-thread accumulator size).
pub const MAX_HEAD_DIM: usize = 512;

/// Keys one split of the attention kernel takes at most before the work is split further: a
/// split's keys are one f16 accumulation chain (sequential per key), so long contexts spread
/// over many blocks; up to this many keys a token gets the CPU's exact chain.
pub const SPLIT_KEYS: usize = 128;
/// Most splits (kernels/attention.cu `ATT_MAX_SPLITS`).
pub const MAX_SPLITS: usize = 64;

/// How many splits attention runs with when a token of the step attends to `max_keys` keys: 1
/// up to `SPLIT_KEYS` (the CPU's exact sequence of roundings), then a power of two so each split
/// takes at most `SPLIT_KEYS` keys, up to `MAX_SPLITS`. A function of the step alone, so a
/// recorded graph is keyed by it (one graph per bucket and power of two as a context grows).
pub fn splits(max_keys: usize) -> usize {
    if max_keys <= SPLIT_KEYS {
        1
    } else {
        max_keys
            .div_ceil(SPLIT_KEYS)
            .next_power_of_two()
            .min(MAX_SPLITS)
    }
}

/// Runs shorter than this many query tokens take the decode kernel (chosen by measurement on the
/// H200: docs/benchmarks/cuda-prefill-attention.md).
pub const PREFILL_MIN_TOKENS: usize = 16;

/// Rows of a prefill query tile (kernels/attention_prefill.cu `FA_BM`): tokens × grouped heads.
pub const PREFILL_ROWS: usize = 64;

/// The prefill kernel for a head dim: (name, output dims per block, keys per tile).
fn prefill_kernel(head_dim: usize) -> Option<(&'static str, usize, usize)> {
    match head_dim {
        64 => Some(("attn_prefill_64", 64, 64)),
        128 => Some(("attn_prefill_128", 128, 64)),
        256 => Some(("attn_prefill_256", 256, 32)),
        512 => Some(("attn_prefill_512", 256, 32)),
        _ => None,
    }
}

/// Static shared memory of the prefill kernels (row tables), with room to spare.
pub(crate) const PREFILL_STATIC_SMEM: usize = 1024;

/// Dynamic shared memory of a prefill kernel: the Q tile and two stages of K and V tiles, rows
/// padded by 8 halves.
fn prefill_smem(head_dim: usize) -> usize {
    let (_, dc, bn) = prefill_kernel(head_dim).expect("a prefill head dim");
    2 * (PREFILL_ROWS * (head_dim + 8) + 2 * bn * (head_dim + 8) + 2 * bn * (dc + 8))
}

/// Every prefill kernel and the dynamic shared memory it launches with.
pub fn prefill_kernels() -> impl Iterator<Item = (&'static str, usize)> {
    [64, 128, 256, 512]
        .into_iter()
        .map(|hd| (prefill_kernel(hd).expect("listed").0, prefill_smem(hd)))
}

/// Split a step's tokens into prefill runs and decode tokens. A run is a maximal stretch of
/// consecutive tokens of one sequence at consecutive positions (a prompt or a chunk of one);
/// runs of at least `min` tokens are returned as (first token, count), every other token's
/// index goes to the decode list.
pub fn split_runs(positions: &[u32], seq_index: &[u32], min: usize) -> (Vec<(u32, u32)>, Vec<u32>) {
    let (mut runs, mut decode) = (Vec::new(), Vec::new());
    let mut t = 0;
    while t < positions.len() {
        let mut e = t + 1;
        while e < positions.len()
            && seq_index[e] == seq_index[t]
            && positions[e] == positions[e - 1] + 1
        {
            e += 1;
        }
        if e - t >= min {
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
    let prefill = prefill_kernel(g.head_dim).filter(|_| {
        !step.prefill_lens.is_empty()
            && group <= PREFILL_ROWS
            && prefill_smem(g.head_dim) + PREFILL_STATIC_SMEM <= b.smem_optin()
    });
    let Some((kernel, dc, _)) = prefill else {
        decode(b, q, kv, g, step, out, n, 0);
        return;
    };
    assert!(
        q.rows >= step.n_tokens,
        "attention: q has {} rows for {} tokens",
        q.rows,
        step.n_tokens
    );
    // Query tiles: `tpt` tokens × `group` heads; per run ceil(len / tpt) tiles.
    let tpt = PREFILL_ROWS / group;
    let n_tiles: usize = step
        .prefill_lens
        .iter()
        .map(|&l| (l as usize).div_ceil(tpt))
        .sum();
    b.launch_w(
        kernel,
        (
            n_tiles as u32,
            g.n_kv_head as u32,
            (g.head_dim / dc) as u32,
        ),
        (128, 1, 1),
        prefill_smem(g.head_dim) as u32,
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

/// The decode kernel over `n` tokens: the first `n` of the step, or those listed at `rows`.
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
    let n_splits = splits(step.max_keys);
    let kernel = match g.head_dim {
        0..=128 => "attention_d1",
        129..=256 => "attention_d2",
        _ => "attention_d4",
    };
    // Partials are indexed by token, so with a row list they cover the whole step.
    let n_part = if rows == 0 { n } else { step.n_tokens };
    let part = (n_splits > 1).then(|| b.scratch(n_part * g.n_head * n_splits * (g.head_dim + 2) * 4));
    let part_ptr = part.as_ref().map_or(0, |p| p.ptr);
    b.launch_w(
        kernel,
        (g.n_head as u32, n as u32, n_splits as u32),
        (128, 1, 1),
        0,
        &[
            Arg::Ptr(q.ptr),
            Arg::Ptr(kv.k),
            Arg::Ptr(kv.v),
            Arg::Ptr(out.ptr),
            Arg::Ptr(part_ptr),
            Arg::Ptr(step.positions),
            Arg::Ptr(step.seq_index),
            Arg::Ptr(step.bt_off),
            Arg::Ptr(step.bt_flat),
            Arg::I32(g.n_head as i32),
            Arg::I32(g.n_kv_head as i32),
            Arg::I32(g.head_dim as i32),
            Arg::I32(kv.kv_dim as i32),
            Arg::I32(g.window.map_or(0, |w| w as i32)),
            Arg::F32(g.scale),
            Arg::I32(n_splits as i32),
            Arg::Ptr(rows),
        ],
        (out.ptr, out.len() * 4),
    );
    if let Some(part) = &part {
        b.launch_w(
            "attention_combine",
            (g.n_head as u32, n as u32, 1),
            (128, 1, 1),
            0,
            &[
                Arg::Ptr(part.ptr),
                Arg::Ptr(out.ptr),
                Arg::I32(g.n_head as i32),
                Arg::I32(g.head_dim as i32),
                Arg::I32(n_splits as i32),
                Arg::Ptr(rows),
            ],
            (out.ptr, out.len() * 4),
        );
    }
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
        let (runs, dec) = split_runs(&pos, &seq, 3);
        assert_eq!(runs, vec![(0, 5), (6, 3)]);
        assert_eq!(dec, vec![5, 9, 10]);
        let (runs, dec) = split_runs(&pos, &seq, 1);
        assert_eq!(runs, vec![(0, 5), (5, 1), (6, 3), (9, 2)]);
        assert!(dec.is_empty());
        let (runs, dec) = split_runs(&pos, &seq, usize::MAX);
        assert!(runs.is_empty());
        assert_eq!(dec.len(), pos.len());
    }

    #[test]
    fn prefill_tiles_fit_the_h100_h200_shared_memory() {
        for (name, bytes) in prefill_kernels() {
            assert!(bytes <= 227 * 1024, "{name}: {bytes} bytes");
        }
    }
}
