//! KV-cache writes (kernels/kv.cu) and paged attention (kernels/attention.cu): one launch of
//! `n_splits` key splits per (head, token), plus a combine launch when there are several.

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
    let n_splits = splits(step.max_keys);
    let kernel = match g.head_dim {
        0..=128 => "attention_d1",
        129..=256 => "attention_d2",
        _ => "attention_d4",
    };
    let part = (n_splits > 1).then(|| b.scratch(n * g.n_head * n_splits * (g.head_dim + 2) * 4));
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
            ],
            (out.ptr, out.len() * 4),
        );
    }
}
