//! KV-cache writes (kernels/kv.cu) and paged attention (kernels/attention.cu).

use kestrel_engine::AttnGeom;

use crate::backend::{Arg, CudaBackend, CudaKv, CudaStep, CudaTensor};

/// Largest head_dim the attention kernel takes (its per-thread accumulator size).
pub const MAX_HEAD_DIM: usize = 512;

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
    b.launch(
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
    b.launch(
        "attention",
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
            Arg::I32(g.window.map_or(0, |w| w as i32)),
            Arg::F32(g.scale),
        ],
    );
}
