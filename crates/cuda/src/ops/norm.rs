//! RMS norm per row or per head (kernels/norm.cu).

use crate::backend::{Arg, CudaBackend, CudaTensor, CudaWeight};
use crate::ops::matmul::ActFmt;

/// Values per block of the whole-row kernels (kernels/norm.cu `NORM_SLICE`).
const NORM_SLICE: usize = 256;

pub fn rms_norm(
    b: &CudaBackend,
    x: &CudaTensor,
    w: Option<&CudaWeight>,
    width: usize,
    eps: f32,
    out: &mut CudaTensor,
) {
    assert_eq!(
        x.len(),
        out.len(),
        "rms_norm: {} values into {}",
        x.len(),
        out.len()
    );
    assert!(
        width > 0 && x.cols.is_multiple_of(width),
        "rms_norm: width {width} does not divide {} columns",
        x.cols
    );
    if let Some(w) = w {
        assert!(
            w.cols >= width,
            "rms_norm: weight of {} for width {width}",
            w.cols
        );
    }
    let groups = x.len() / width;
    if groups == 0 {
        return;
    }
    if width != x.cols || out.cols != x.cols {
        let args = [
            Arg::Ptr(x.ptr),
            Arg::Ptr(w.map_or(0, |w| w.ptr)),
            Arg::Ptr(out.ptr),
            Arg::I32(width as i32),
            Arg::F32(eps),
        ];
        // Per head: one block per group.
        let threads = (width.div_ceil(4).next_multiple_of(32)).clamp(32, 256) as u32;
        b.launch_w(
            "rms_norm",
            (groups as u32, 1, 1),
            (threads, 1, 1),
            0,
            &args,
            (out.ptr, out.len() * 4),
        );
        return;
    }
    row_kernel(b, x, w, eps, None, None, out);
}

/// `x = (x + rms_norm(y) · w) · scale[0]` over whole rows in one launch (`Backend::
/// add_rms_norm`): the norm kernels with the residual applied as each value is written, so `x`
/// gets the bits of rms_norm + add + scale_by, and its 8-bit blocks when a matmul reads it next
/// (Gemma 4's per-layer-embedding gate). Per-head widths take the separate ops.
/// `KESTREL_CUDA_FUSE_RESIDUAL=0` turns the fusion off (A/B).
#[allow(clippy::too_many_arguments)]
pub fn add_rms_norm(
    b: &CudaBackend,
    x: &mut CudaTensor,
    y: &CudaTensor,
    w: Option<&CudaWeight>,
    width: usize,
    eps: f32,
    scale: Option<&CudaWeight>,
    tmp: &mut CudaTensor,
) {
    static FUSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let fuse = *FUSE
        .get_or_init(|| std::env::var("KESTREL_CUDA_FUSE_RESIDUAL").map_or(true, |v| v != "0"));
    assert_eq!(x.len(), y.len(), "add_rms_norm: {} vs {}", x.len(), y.len());
    if !fuse || width != y.cols || x.cols != y.cols || x.is_empty() {
        rms_norm(b, y, w, width, eps, tmp);
        crate::ops::elementwise::add(b, x, tmp);
        if let Some(s) = scale {
            crate::ops::elementwise::scale_by(b, x, s);
        }
        return;
    }
    if let Some(w) = w {
        assert!(
            w.cols >= width,
            "add_rms_norm: weight of {} for width {width}",
            w.cols
        );
    }
    let res = x.ptr;
    row_kernel(b, y, w, eps, Some(res), scale.map(|s| s.ptr), x);
}

/// Whole rows of `x` into `out` (`res`: `out` itself for the fused residual).
fn row_kernel(
    b: &CudaBackend,
    x: &CudaTensor,
    w: Option<&CudaWeight>,
    eps: f32,
    res: Option<u64>,
    post: Option<u64>,
    out: &mut CudaTensor,
) {
    let width = x.cols;
    let writes = (out.ptr, out.len() * 4);
    let mut args = vec![
        Arg::Ptr(x.ptr),
        Arg::Ptr(w.map_or(0, |w| w.ptr)),
        Arg::Ptr(out.ptr),
        Arg::I32(width as i32),
        Arg::F32(eps),
        Arg::Ptr(res.unwrap_or(0)),
        Arg::Ptr(post.unwrap_or(0)),
    ];
    // Whole rows: a block per 256-value slice of each row. A row feeds matmuls, so the fused
    // kernels also write their 8-bit blocks (same values, same bits).
    let grid = (x.rows as u32, width.div_ceil(NORM_SLICE) as u32, 1);
    let block = (NORM_SLICE as u32, 1, 1);
    let target = b.produce_target(out);
    let name = match target {
        Some((fmt, base, lay)) => {
            args.extend([
                Arg::Ptr(base),
                Arg::Ptr(base + lay.d as u64),
                Arg::Ptr(base + lay.s as u64),
            ]);
            b.wrote(base, lay.bytes);
            match fmt {
                ActFmt::A32 => "rms_norm_a32",
                ActFmt::A256 => "rms_norm_a256",
            }
        }
        None => "rms_norm_row",
    };
    b.launch_w(name, grid, block, 0, &args, writes);
    if let Some((fmt, _, _)) = target {
        b.produced(out, fmt);
    }
}
