//! `KESTREL_CPU_SIMD` forces the level `matmul` runs at. Its own test binary (one process, one
//! test): the variable is read once, on first use.

use kestrel_cpu::ops::matmul::{matmul, matmul_with, WeightMatrix};
use kestrel_cpu::quant_dot::{self, SimdLevel};
use kestrel_gguf::GgmlType;

#[test]
fn env_var_forces_the_scalar_path() {
    std::env::set_var("KESTREL_CPU_SIMD", "scalar");
    assert_eq!(quant_dot::selected(), SimdLevel::Scalar);
    // Scalar output is bit-identical to matmul_with(Scalar).
    let mut data = vec![0x5Au8; 34 * 4];
    for b in data.chunks_exact_mut(34) {
        b[0..2].copy_from_slice(&0x2C00u16.to_le_bytes()); // f16 0.0625
    }
    let w = WeightMatrix {
        ty: GgmlType::Q8_0,
        data: &data,
        rows: 2,
        cols: 64,
    };
    let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
    let (mut a, mut b) = (vec![0f32; 2], vec![0f32; 2]);
    matmul(&w, &x, 1, &mut a);
    matmul_with(SimdLevel::Scalar, &w, &x, 1, &mut b);
    assert_eq!(a, b);
}
