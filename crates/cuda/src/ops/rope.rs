//! Rotary position embedding at the step's positions (kernels/rope.cu).

use kestrel_model::RopeSpec;

use crate::backend::{Arg, CudaBackend, CudaStep, CudaTensor, CudaWeight};

pub fn rope(
    b: &CudaBackend,
    x: &mut CudaTensor,
    head_dim: usize,
    rope: &RopeSpec,
    factors: Option<&CudaWeight>,
    step: &CudaStep,
) {
    assert!(
        x.cols.is_multiple_of(head_dim),
        "rope: head_dim {head_dim} does not divide {} columns",
        x.cols
    );
    assert!(
        rope.n_rot <= head_dim && rope.n_rot.is_multiple_of(2),
        "rope: n_rot {} for head_dim {head_dim}",
        rope.n_rot
    );
    let n = x.rows.min(step.n_tokens);
    if n == 0 || rope.n_rot == 0 {
        return;
    }
    // The factors apply only when the spec names them (as on the CPU).
    let factors = if rope.freq_factors.is_some() {
        factors
    } else {
        None
    };
    if let Some(f) = factors {
        assert!(
            f.cols >= rope.n_rot / 2,
            "rope: {} freq factors for n_rot {}",
            f.cols,
            rope.n_rot
        );
    }
    // Same f32 expression as the CPU backend, so the angles agree bit for bit.
    let theta_scale = rope.base.powf(-2.0 / rope.n_rot as f32);
    b.launch_w(
        "rope",
        (n as u32, (x.cols / head_dim) as u32, 1),
        (
            (rope.n_rot / 2).next_multiple_of(32).clamp(32, 256) as u32,
            1,
            1,
        ),
        (rope.n_rot * 4) as u32,
        &[
            Arg::Ptr(x.ptr),
            Arg::I32(x.cols as i32),
            Arg::I32(head_dim as i32),
            Arg::I32(rope.n_rot as i32),
            Arg::F32(theta_scale),
            Arg::F32(rope.freq_scale),
            Arg::I32(rope.neox as i32),
            Arg::Ptr(factors.map_or(0, |f| f.ptr)),
            Arg::Ptr(step.positions),
        ],
        (x.ptr, x.len() * 4),
    );
}
