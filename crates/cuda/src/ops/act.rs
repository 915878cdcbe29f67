//! Gated FFN activations (kernels/act.cu).

use kestrel_model::FfnKind;

use crate::backend::{grid_for, Arg, CudaBackend, CudaTensor};

pub fn gated_act(b: &CudaBackend, gate: &mut CudaTensor, up: &CudaTensor, kind: FfnKind) {
    assert_eq!(
        gate.len(),
        up.len(),
        "gated_act: gate {} vs up {}",
        gate.len(),
        up.len()
    );
    let n = gate.len();
    if n == 0 {
        return;
    }
    let name = match kind {
        FfnKind::SiluGated => "silu_mul",
        FfnKind::GeluTanhGated => "gelu_mul",
    };
    b.launch(
        name,
        (grid_for(n, 256), 1, 1),
        (256, 1, 1),
        0,
        &[Arg::Ptr(gate.ptr), Arg::Ptr(up.ptr), Arg::U64(n as u64)],
    );
}
