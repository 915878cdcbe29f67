//! Matmul throughput on the shapes of qwen2.5-coder-0.5b.
//!
//! `cargo run --release -p kestrel-cpu --example matmul_speed [-- LEVEL... ]
//! [--tg-only|--pp-only|--model-only|--gguf PATH]` where LEVEL is scalar|avx2|avx512 (default:
//! avx2 and avx512, as far as the CPU has them). `--gguf` times every matmul of one forward
//! pass of a real model file (all 2-D `blk.*` tensors, then the output head).
//! n_tokens = 1 reports weight bytes streamed per second (GB/s); n_tokens = 512 reports
//! 2·rows·cols·tokens per second (GFLOP/s-equivalent) and the time per call.

use std::time::{Duration, Instant};

use kestrel_cpu::ops::matmul::{matmul_with, WeightMatrix};
use kestrel_cpu::quant_dot::{self, SimdLevel};
use kestrel_gguf::quant::f32_to_f16;
use kestrel_gguf::GgmlType::{self, *};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Random blocks with every f16 field set to a small value (codes random).
fn weights(ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(7);
    let bytes = ty.row_bytes(cols as u64).unwrap() as usize * rows;
    let mut data: Vec<u8> = (0..bytes).map(|_| rng.gen()).collect();
    let f16_fields: &[usize] = match ty {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        F16 => &[],
        _ => panic!("no generator for {ty}"),
    };
    let h = f32_to_f16(0.03).to_le_bytes();
    for blk in data.chunks_exact_mut(ty.type_size()) {
        for &o in f16_fields {
            blk[o..o + 2].copy_from_slice(&h);
        }
    }
    if ty == F16 {
        for v in data.chunks_exact_mut(2) {
            v.copy_from_slice(&f32_to_f16(rng.gen_range(-1.0..1.0)).to_le_bytes());
        }
    }
    data
}

/// Fastest seconds per call over at least `min_runs` runs and `min_time` (the minimum, not the
/// median: the machine is shared, and other work only ever adds time).
fn time(mut f: impl FnMut(), min_runs: usize, min_time: Duration) -> f64 {
    f();
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < min_runs || start.elapsed() < min_time {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.into_iter().fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut levels: Vec<SimdLevel> = args
        .iter()
        .filter_map(|a| SimdLevel::from_name(a))
        .collect();
    if levels.is_empty() {
        levels = [SimdLevel::Avx2, SimdLevel::Avx512]
            .into_iter()
            .filter(|&l| l <= quant_dot::detected())
            .collect();
    }
    if let Some(i) = args.iter().position(|a| a == "--gguf") {
        let path = args.get(i + 1).expect("--gguf PATH");
        for &level in &levels {
            gguf_pass(path, level);
        }
        return;
    }
    let only = |f: &str| args.iter().any(|a| a == f);
    let tg = !only("--pp-only") && !only("--model-only");
    let pp = !only("--tg-only") && !only("--model-only");
    let model = !only("--tg-only") && !only("--pp-only");
    println!(
        "rayon threads: {}, detected SIMD: {:?}, levels: {:?}",
        rayon::current_num_threads(),
        quant_dot::detected(),
        levels
    );

    // (type, rows, cols, what): cols = ne0 (input width), rows = ne1 (outputs).
    let tg_shapes: &[(GgmlType, usize, usize, &str)] = &[
        (Q8_0, 151936, 896, "output head"),
        (Q8_0, 4864, 896, "ffn_up"),
        (Q5_0, 4864, 896, "ffn_up/gate"),
        (Q5_0, 896, 4864, "ffn_down"),
        (Q4_0, 4864, 896, "ffn_up"),
        (Q4_1, 4864, 896, "ffn_up"),
        (Q5_1, 4864, 896, "ffn_up"),
        (Q6_K, 896, 4864, "ffn_down"),
        (Q4_K, 896, 4864, "ffn_down"),
        (Q5_K, 896, 4864, "ffn_down"),
        (Q3_K, 896, 4864, "ffn_down"),
        (Q2_K, 896, 4864, "ffn_down"),
        (F16, 896, 4864, "ffn_down"),
    ];
    let pp_shapes: &[(GgmlType, usize, usize, &str)] = &[
        (Q5_0, 4864, 896, "ffn_up/gate"),
        (Q5_0, 896, 896, "attn_q/o"),
        (Q8_0, 4864, 896, "ffn_up"),
        (Q4_0, 4864, 896, "ffn_up"),
        (Q4_1, 4864, 896, "ffn_up"),
        (Q5_1, 4864, 896, "ffn_up"),
        (Q6_K, 896, 4864, "ffn_down"),
        (Q4_K, 896, 4864, "ffn_down"),
        (Q5_K, 896, 4864, "ffn_down"),
        (Q3_K, 896, 4864, "ffn_down"),
        (Q2_K, 896, 4864, "ffn_down"),
        (F16, 896, 4864, "ffn_down"),
    ];

    let mut rng = StdRng::seed_from_u64(9);
    if tg {
        println!("\nn_tokens = 1 (weight GB/s)");
        println!(
            "{:<6} {:>7} {:>7} {:<12} {:>9} per level: µs/call GB/s",
            "type", "rows", "cols", "tensor", "MB"
        );
        for &(ty, rows, cols, what) in tg_shapes {
            let data = weights(ty, rows, cols);
            let w = WeightMatrix {
                ty,
                data: &data,
                rows,
                cols,
            };
            let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut out = vec![0f32; rows];
            let mut line = format!(
                "{:<6} {:>7} {:>7} {:<12} {:>9.2}",
                ty.name(),
                rows,
                cols,
                what,
                data.len() as f64 / 1e6
            );
            for &level in &levels {
                let s = time(
                    || matmul_with(level, &w, &x, 1, &mut out),
                    5,
                    Duration::from_millis(400),
                );
                line += &format!(
                    "  {}: {:8.1} µs {:6.2} GB/s",
                    level.name(),
                    s * 1e6,
                    data.len() as f64 / s / 1e9
                );
            }
            println!("{line}");
        }
    }
    if pp {
        let n = 512;
        println!("\nn_tokens = {n} (GFLOP/s = 2·rows·cols·tokens / time)");
        println!(
            "{:<6} {:>7} {:>7} {:<12} per level: ms/call GFLOP/s",
            "type", "rows", "cols", "tensor"
        );
        for &(ty, rows, cols, what) in pp_shapes {
            let data = weights(ty, rows, cols);
            let w = WeightMatrix {
                ty,
                data: &data,
                rows,
                cols,
            };
            let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut out = vec![0f32; n * rows];
            let mut line = format!("{:<6} {:>7} {:>7} {:<12}", ty.name(), rows, cols, what);
            for &level in &levels {
                let s = time(
                    || matmul_with(level, &w, &x, n, &mut out),
                    3,
                    Duration::from_millis(600),
                );
                let flop = 2.0 * rows as f64 * cols as f64 * n as f64;
                line += &format!(
                    "  {}: {:7.2} ms {:6.1} GFLOP/s",
                    level.name(),
                    s * 1e3,
                    flop / s / 1e9
                );
            }
            println!("{line}");
        }
    }
    if model {
        println!("\nwhole-model matmuls (qwen2.5-coder-0.5b shapes)");
        for &level in &levels {
            model_pass(level, false);
            // The same pass run inside the pool, as a forward pass wrapped in the pool would.
            rayon::scope(|_| model_pass(level, true));
        }
    }
}

/// (type, rows, cols, bytes)
type Matrix = (GgmlType, usize, usize, Vec<u8>);

/// All matmuls of one qwen2.5-coder-0.5b forward pass (24 layers: Q5_0 q/k/v/o/gate/up,
/// Q6_K ffn_down; Q8_0 output head), each layer with its own weights so nothing stays in
/// cache. tg: 1 token through everything; pp: 512 tokens through the layers plus the head for
/// the last token (as a prompt pass computes it). Prints the matmul-only time and the token
/// rate it would allow, with the caller outside the rayon pool or inside it.
fn model_pass(level: SimdLevel, in_pool: bool) {
    let (d, kv, ff, vocab, layers) = (896, 128, 4864, 151936, 24);
    let shapes = [
        (Q5_0, d, d),
        (Q5_0, kv, d),
        (Q5_0, kv, d),
        (Q5_0, d, d),
        (Q5_0, ff, d),
        (Q5_0, ff, d),
        (Q6_K, d, ff),
    ];
    let layer_w: Vec<Vec<Matrix>> = (0..layers)
        .map(|_| {
            shapes
                .iter()
                .map(|&(ty, rows, cols)| (ty, rows, cols, weights(ty, rows, cols)))
                .collect()
        })
        .collect();
    let head = weights(Q8_0, vocab, d);
    let bytes: usize = layer_w.iter().flatten().map(|w| w.3.len()).sum::<usize>() + head.len();
    let mut rng = StdRng::seed_from_u64(5);
    for n in [1usize, 512] {
        let x: Vec<f32> = (0..n * ff).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut out = vec![0f32; (n * ff).max(vocab)];
        let mut flop = 0.0;
        let runs = if n == 1 { 5 } else { 2 };
        let mut best = f64::INFINITY;
        for _ in 0..runs {
            let t = Instant::now();
            for layer in &layer_w {
                for (ty, rows, cols, data) in layer {
                    let w = WeightMatrix {
                        ty: *ty,
                        data,
                        rows: *rows,
                        cols: *cols,
                    };
                    matmul_with(level, &w, &x, n, &mut out);
                }
            }
            let w = WeightMatrix {
                ty: Q8_0,
                data: &head,
                rows: vocab,
                cols: d,
            };
            matmul_with(level, &w, &x[(n - 1) * d..], 1, &mut out);
            best = best.min(t.elapsed().as_secs_f64());
        }
        for (_, rows, cols) in shapes {
            flop += 2.0 * (rows * cols * n * layers) as f64;
        }
        flop += 2.0 * (vocab * d) as f64;
        println!(
            "{:<6} {:<14} n_tokens={n:>3}: {:8.2} ms per pass, {:6.1} tokens/s, {:5.1} GB/s of {:.0} MB, {:5.1} GFLOP/s",
            level.name(),
            if in_pool { "inside pool" } else { "outside pool" },
            best * 1e3,
            n as f64 / best,
            bytes as f64 / best / 1e9,
            bytes as f64 / 1e6,
            flop / best / 1e9
        );
    }
}

/// The matmuls of one forward pass of a real GGUF model: every 2-D `blk.*` tensor (n tokens)
/// and the output head (`output.weight`, else the tied `token_embd.weight`; last token only).
fn gguf_pass(path: &str, level: SimdLevel) {
    let file = kestrel_gguf::GgufFile::open(path).expect("open gguf");
    let mats: Vec<WeightMatrix> = file
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("blk.") && t.shape.len() == 2)
        .map(|t| WeightMatrix {
            ty: t.ty,
            data: file.tensor_data(t),
            rows: t.shape[1] as usize,
            cols: t.shape[0] as usize,
        })
        .collect();
    let head_t = file
        .tensor("output.weight")
        .or_else(|| file.tensor("token_embd.weight"))
        .expect("output head");
    let head = WeightMatrix {
        ty: head_t.ty,
        data: file.tensor_data(head_t),
        rows: head_t.shape[1] as usize,
        cols: head_t.shape[0] as usize,
    };
    let bytes: usize = mats.iter().map(|m| m.data.len()).sum::<usize>() + head.data.len();
    let width = mats.iter().map(|m| m.cols.max(m.rows)).max().unwrap_or(0);
    let mut types: Vec<String> = mats.iter().map(|m| m.ty.name().to_string()).collect();
    types.sort();
    types.dedup();
    let mut rng = StdRng::seed_from_u64(3);
    for n in [1usize, 512] {
        let x: Vec<f32> = (0..n * width).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut out = vec![0f32; (n * width).max(head.rows)];
        let mut best = f64::INFINITY;
        for _ in 0..if n == 1 { 5 } else { 2 } {
            let t = Instant::now();
            for m in &mats {
                matmul_with(level, m, &x, n, &mut out);
            }
            matmul_with(level, &head, &x[(n - 1) * head.cols..], 1, &mut out);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{} {}: {} matrices ({}) + {} head, n_tokens={n:>3}: {:8.2} ms per pass, {:6.1} tokens/s, {:5.1} GB/s of {:.0} MB",
            path.rsplit('/').next().unwrap_or(path),
            level.name(),
            mats.len(),
            types.join(" "),
            head.ty.name(),
            best * 1e3,
            n as f64 / best,
            bytes as f64 / best / 1e9,
            bytes as f64 / 1e6
        );
    }
}
