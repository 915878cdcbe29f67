//! Helpers shared by the GPU tests: random weights in every block format, in-memory GGUF files,
//! and comparisons.
#![allow(dead_code)]

pub mod synth;

use std::sync::Arc;

use half::{bf16, f16};
use kestrel_cpu::backend::CpuTensor;
use kestrel_cpu::CpuBackend;
use kestrel_cuda::{CudaBackend, CudaTensor};
use kestrel_engine::{Backend, StepInfo, WeightRef};
use kestrel_gguf::{GgmlType, GgufFile, GgufWriter};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Approximately N(0, 1) (sum of uniforms), never exactly zero in practice.
pub fn normal(r: &mut StdRng) -> f32 {
    let s: f32 = (0..6).map(|_| r.gen::<f32>()).sum();
    (s - 3.0) * std::f32::consts::SQRT_2
}

pub fn normals(r: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| normal(r) * scale).collect()
}

fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// A `rows × cols` weight of type `ty` with random codes and scales chosen so the values have
/// roughly standard deviation `sigma` (signs of symmetric-type scales random, as quantizers make
/// them).
pub fn random_weight(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    sigma: f32,
    r: &mut StdRng,
) -> Vec<u8> {
    use GgmlType::*;
    let n = rows * cols;
    match ty {
        F32 => {
            return normals(r, n, sigma)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect()
        }
        F16 => {
            return normals(r, n, sigma)
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect()
        }
        BF16 => {
            return normals(r, n, sigma)
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect()
        }
        _ => {}
    }
    let (bs, size) = (ty.block_size(), ty.type_size());
    assert_eq!(n % bs, 0);
    let mut bytes = vec![0u8; n / bs * size];
    r.fill_bytes(&mut bytes);
    for b in bytes.chunks_exact_mut(size) {
        let jitter = 0.5 + r.gen::<f32>();
        let sign = if r.gen::<bool>() { 1.0 } else { -1.0 };
        let d = sigma * jitter;
        match ty {
            Q4_0 => put_f16(b, 0, sign * d / 4.6),
            Q4_1 => {
                put_f16(b, 0, d / 4.6);
                put_f16(b, 2, -7.5 * d / 4.6);
            }
            Q5_0 => put_f16(b, 0, sign * d / 9.2),
            Q5_1 => {
                put_f16(b, 0, d / 9.2);
                put_f16(b, 2, -15.5 * d / 9.2);
            }
            Q8_0 => put_f16(b, 0, sign * d / 73.0),
            Q2_K => {
                put_f16(b, 80, d / 8.0);
                put_f16(b, 82, 1.5 * d / 8.0);
            }
            Q3_K => put_f16(b, 108, sign * d / 42.0),
            Q4_K => {
                put_f16(b, 0, d / 145.0);
                put_f16(b, 2, 7.5 * d / 145.0);
            }
            Q5_K => {
                put_f16(b, 0, d / 290.0);
                put_f16(b, 2, 15.5 * d / 290.0);
            }
            Q6_K => put_f16(b, 208, sign * d / 1370.0),
            other => panic!("random_weight: {other} not handled"),
        }
    }
    bytes
}

/// Build an in-memory GGUF holding `tensors` (name, ggml shape, type, bytes) and `meta`.
pub fn gguf(
    meta: &[(&str, kestrel_gguf::MetaValue)],
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
) -> Arc<GgufFile> {
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add_meta(k, v.clone());
    }
    for (name, shape, ty, data) in tensors {
        w.add_tensor(&name, &shape, ty, data).expect("valid tensor");
    }
    Arc::new(GgufFile::from_bytes(w.to_bytes()).expect("valid gguf"))
}

pub fn wref<'a>(f: &'a Arc<GgufFile>, name: &'a str) -> WeightRef<'a> {
    let t = f.tensor(name).unwrap_or_else(|| panic!("no tensor {name}"));
    let start = (f.data_offset + t.offset) as usize;
    WeightRef {
        name,
        ty: t.ty,
        shape: &t.shape,
        file: f,
        range: start..start + t.size as usize,
    }
}

/// ‖a − b‖ / ‖b‖ (f64); panics on NaN in `a` or a length mismatch.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    if let Some(i) = a.iter().position(|v| v.is_nan()) {
        panic!("NaN at {i} (an output element was not written?)");
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += ((*x as f64) - (*y as f64)).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den.max(1e-300)).sqrt()
}

/// max_i |a_i − b_i| / max(1, |b_i|) (f64); panics on NaN in `a`.
pub fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let mut m = 0f64;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            !x.is_nan() || y.is_nan(),
            "NaN at {i} (an output element was not written?)"
        );
        if x.is_nan() && y.is_nan() {
            continue;
        }
        m = m.max(((*x as f64) - (*y as f64)).abs() / (*y as f64).abs().max(1.0));
    }
    m
}

/// The CUDA backend on GPU 0 (tests that call this are `#[ignore = "needs CUDA"]`).
pub fn gpu() -> kestrel_cuda::CudaBackend {
    kestrel_cuda::CudaBackend::new(0).unwrap_or_else(|e| panic!("CUDA backend: {e:#}"))
}

pub fn gpu_in(g: &CudaBackend, rows: usize, cols: usize, data: &[f32]) -> CudaTensor {
    let mut t = g.alloc(rows, cols);
    g.write(&mut t, data);
    t
}

pub fn gpu_out(g: &CudaBackend, rows: usize, cols: usize) -> CudaTensor {
    let mut t = g.alloc(rows, cols);
    g.fill(&mut t, f32::NAN);
    t
}

pub fn cpu_in(cpu: &CpuBackend, rows: usize, cols: usize, data: &[f32]) -> CpuTensor {
    let mut t = cpu.alloc(rows, cols);
    t.data.copy_from_slice(data);
    t
}

pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// RMS of the difference of two logit vectors.
pub fn rms_diff(a: &[f32], b: &[f32]) -> f32 {
    (a.iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64)
        .sqrt() as f32
}

/// Median seconds per call of `f`, from CUDA-graph replays of `n` calls (no launch gaps).
pub fn graph_time(g: &CudaBackend, n: usize, f: impl Fn(usize)) -> f64 {
    let graph = g.record(|| (0..n).for_each(&f)).expect("recording");
    graph.launch().expect("replay");
    g.synchronize();
    let mut ts: Vec<f64> = (0..5)
        .map(|_| {
            let t = std::time::Instant::now();
            graph.launch().expect("replay");
            g.synchronize();
            t.elapsed().as_secs_f64() / n as f64
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[2]
}

/// One sequence of `n` tokens at positions 0..n in blocks 0, 1, ...
pub fn simple_step(tokens: Vec<u32>) -> StepInfo {
    let n = tokens.len();
    StepInfo {
        positions: (0..n as u32).collect(),
        slots: (0..n as u32).collect(),
        seq_index: vec![0; n],
        block_tables: vec![(0..n.div_ceil(16) as u32).collect()],
        logit_rows: vec![n as u32 - 1],
        tokens,
        ..Default::default()
    }
}

/// Block tables for sequences of the given capacities (tokens), their blocks scattered over the
/// pool by a random permutation; returns them and the pool's slots.
pub fn scattered_tables(caps: &[usize], r: &mut StdRng) -> (Vec<Vec<u32>>, usize) {
    let n_blocks: usize = caps.iter().map(|c| c.div_ceil(16)).sum();
    let mut perm: Vec<u32> = (0..n_blocks as u32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, r.gen_range(0..=i));
    }
    let mut at = 0;
    let t = caps
        .iter()
        .map(|c| {
            let b = perm[at..at + c.div_ceil(16)].to_vec();
            at += c.div_ceil(16);
            b
        })
        .collect();
    (t, n_blocks * 16)
}

/// A step that writes every position of sequences of `lens` tokens in `tables` (filling their
/// caches in one prefill-like step).
pub fn fill_step(lens: &[usize], tables: &[Vec<u32>]) -> StepInfo {
    let mut fill = StepInfo::default();
    for (s, &l) in lens.iter().enumerate() {
        for p in 0..l {
            fill.tokens.push(0);
            fill.positions.push(p as u32);
            fill.slots.push(tables[s][p / 16] * 16 + (p % 16) as u32);
            fill.seq_index.push(s as u32);
        }
    }
    fill.block_tables = tables.to_vec();
    fill.logit_rows = vec![0];
    fill
}
