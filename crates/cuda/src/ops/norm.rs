//! RMS norm per row or per head (kernels/norm.cu).

use crate::backend::{Arg, CudaBackend, CudaTensor, CudaWeight};

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
    let threads = (width.next_multiple_of(32)).clamp(32, 256) as u32;
    b.launch(
        "rms_norm",
        (groups as u32, 1, 1),
        (threads, 1, 1),
        0,
        &[
            Arg::Ptr(x.ptr),
            Arg::Ptr(w.map_or(0, |w| w.ptr)),
            Arg::Ptr(out.ptr),
            Arg::I32(width as i32),
            Arg::F32(eps),
        ],
    );
}
