//! Gated FFN activations (kernels/act.cu).

use kestrel_model::FfnKind;

use crate::backend::{grid_for, Arg, CudaBackend, CudaTensor};
use crate::ops::matmul::ActFmt;

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
    let gelu = matches!(kind, FfnKind::GeluTanhGated);
    let writes = (gate.ptr, n * 4);
    // The result feeds the down projection: write its 8-bit blocks too (same bits as quantizing
    // it afterwards), one warp per block.
    if let Some((fmt, base, lay)) = b.produce_target(gate) {
        let name = match (fmt, gelu) {
            (ActFmt::A32, false) => "silu_mul_a32",
            (ActFmt::A32, true) => "gelu_mul_a32",
            (ActFmt::A256, false) => "silu_mul_a256",
            (ActFmt::A256, true) => "gelu_mul_a256",
        };
        let n_blocks = n / fmt.block();
        b.wrote(base, lay.bytes);
        b.launch_w(
            name,
            (n_blocks.div_ceil(8) as u32, 1, 1),
            (256, 1, 1),
            0,
            &[
                Arg::Ptr(gate.ptr),
                Arg::Ptr(up.ptr),
                Arg::U64(n_blocks as u64),
                Arg::Ptr(base),
                Arg::Ptr(base + lay.d as u64),
                Arg::Ptr(base + lay.s as u64),
            ],
            writes,
        );
        b.produced(gate, fmt);
        return;
    }
    let name = if gelu { "gelu_mul" } else { "silu_mul" };
    b.launch_w(
        name,
        (grid_for(n, 256), 1, 1),
        (256, 1, 1),
        0,
        &[Arg::Ptr(gate.ptr), Arg::Ptr(up.ptr), Arg::U64(n as u64)],
        writes,
    );
}
