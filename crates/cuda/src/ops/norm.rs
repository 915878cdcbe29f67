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
    let writes = (out.ptr, out.len() * 4);
    let mut args = vec![
        Arg::Ptr(x.ptr),
        Arg::Ptr(w.map_or(0, |w| w.ptr)),
        Arg::Ptr(out.ptr),
        Arg::I32(width as i32),
        Arg::F32(eps),
    ];
    if width != x.cols || out.cols != x.cols {
        // Per head: one block per group.
        let threads = (width.div_ceil(4).next_multiple_of(32)).clamp(32, 256) as u32;
        b.launch_w(
            "rms_norm",
            (groups as u32, 1, 1),
            (threads, 1, 1),
            0,
            &args,
            writes,
        );
        return;
    }
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
