//! Small elementwise ops (kernels/elementwise.cu).

use crate::backend::{grid_for, Arg, CudaBackend, CudaStep, CudaTensor, CudaWeight};

fn launch_1d(b: &CudaBackend, name: &str, n: usize, args: &[Arg]) {
    if n == 0 {
        return;
    }
    b.launch(name, (grid_for(n, 256), 1, 1), (256, 1, 1), 0, args);
}

/// `launch_1d` for a kernel that writes only `x` (the quantized-input cache keeps other inputs).
fn launch_1d_x(b: &CudaBackend, name: &str, x: &CudaTensor, args: &[Arg]) {
    let n = x.len();
    if n == 0 {
        return;
    }
    b.launch_w(
        name,
        (grid_for(n, 256), 1, 1),
        (256, 1, 1),
        0,
        args,
        (x.ptr, n * 4),
    );
}

pub fn add(b: &CudaBackend, x: &mut CudaTensor, y: &CudaTensor) {
    assert_eq!(x.len(), y.len(), "add: {} vs {}", x.len(), y.len());
    let n = x.len();
    launch_1d_x(
        b,
        "add",
        x,
        &[Arg::Ptr(x.ptr), Arg::Ptr(y.ptr), Arg::U64(n as u64)],
    );
}

pub fn add_bias(b: &CudaBackend, x: &mut CudaTensor, bias: &CudaWeight) {
    assert_eq!(
        bias.cols, x.cols,
        "add_bias: bias of {} for {} columns",
        bias.cols, x.cols
    );
    let n = x.len();
    launch_1d_x(
        b,
        "add_bias",
        x,
        &[
            Arg::Ptr(x.ptr),
            Arg::Ptr(bias.ptr),
            Arg::I32(x.cols as i32),
            Arg::U64(n as u64),
        ],
    );
}

pub fn scale_by(b: &CudaBackend, x: &mut CudaTensor, s: &CudaWeight) {
    let n = x.len();
    launch_1d(
        b,
        "scale_by",
        n,
        &[Arg::Ptr(x.ptr), Arg::Ptr(s.ptr), Arg::U64(n as u64)],
    );
}

pub fn scale(b: &CudaBackend, x: &mut CudaTensor, c: f32) {
    let n = x.len();
    launch_1d(
        b,
        "scale",
        n,
        &[Arg::Ptr(x.ptr), Arg::F32(c), Arg::U64(n as u64)],
    );
}

pub fn copy_cols(b: &CudaBackend, src: &CudaTensor, col0: usize, out: &mut CudaTensor) {
    assert!(
        col0 + out.cols <= src.cols,
        "copy_cols: columns {col0}..{} of {}",
        col0 + out.cols,
        src.cols
    );
    assert_eq!(
        out.rows, src.rows,
        "copy_cols: {} rows from {}",
        out.rows, src.rows
    );
    let n = out.len();
    launch_1d(
        b,
        "copy_cols",
        n,
        &[
            Arg::Ptr(src.ptr),
            Arg::I32(src.cols as i32),
            Arg::I32(col0 as i32),
            Arg::Ptr(out.ptr),
            Arg::I32(out.cols as i32),
            Arg::U64(n as u64),
        ],
    );
}

pub fn softcap(b: &CudaBackend, x: &mut CudaTensor, cap: f32) {
    let n = x.len();
    launch_1d(
        b,
        "softcap",
        n,
        &[Arg::Ptr(x.ptr), Arg::F32(cap), Arg::U64(n as u64)],
    );
}

pub fn gather_logit_rows(b: &CudaBackend, x: &CudaTensor, step: &CudaStep, out: &mut CudaTensor) {
    assert_eq!(
        out.cols, x.cols,
        "gather_logit_rows: {} vs {} columns",
        out.cols, x.cols
    );
    assert!(
        out.rows >= step.n_logits,
        "gather_logit_rows: {} rows for {} logit rows",
        out.rows,
        step.n_logits
    );
    if step.n_logits == 0 || x.cols == 0 {
        return;
    }
    b.launch(
        "gather_rows",
        (grid_for(x.cols, 256).min(64), step.n_logits as u32, 1),
        (256, 1, 1),
        0,
        &[
            Arg::Ptr(x.ptr),
            Arg::Ptr(step.logit_rows),
            Arg::I32(x.cols as i32),
            Arg::Ptr(out.ptr),
        ],
    );
}
