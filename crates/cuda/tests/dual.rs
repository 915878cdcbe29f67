//! Op-by-op diagnosis inside a whole model: a `Backend` that runs every op on both the CPU and
//! the GPU, compares the outputs, and then copies the CPU's result into the GPU tensor, so each
//! op is checked on identical inputs in the model's real data flow. Prints every op whose output
//! differs by more than 1e-5 (relative L2), and fails on any above `OP_TOL`. This is the strict
//! whole-model check: free-running comparisons (tests/model.rs) can only bound the drift that
//! 8-bit activation quantization amplifies.

mod common;

use std::cell::RefCell;

use common::synth::{real_shaped_models, tiny_models};
use common::*;
use kestrel_cpu::backend::{CpuStep, CpuTensor, CpuWeight};
use kestrel_cpu::ops::attention::KvPool;
use kestrel_cpu::CpuBackend;
use kestrel_cuda::{CudaBackend, CudaKv, CudaStep, CudaTensor, CudaWeight};
use kestrel_engine::{AttnGeom, Backend, BatchEntry, Engine, EngineConfig, StepInfo, WeightRef};
use kestrel_model::{FfnKind, RopeSpec};

const OP_TOL: f64 = 1e-4;

struct Dual {
    c: CpuBackend,
    g: CudaBackend,
    calls: RefCell<usize>,
    report: RefCell<Vec<(usize, String, f64)>>,
}

impl Dual {
    fn check(&self, op: &str, t: &mut (CpuTensor, CudaTensor)) {
        let mut n = self.calls.borrow_mut();
        *n += 1;
        let got = self.g.read(&t.1);
        let e = rel_err(&got, &t.0.data);
        if e > 1e-5 || !e.is_finite() {
            self.report.borrow_mut().push((*n, op.to_string(), e));
        }
        self.g.write(&mut t.1, &t.0.data);
    }
}

impl Backend for Dual {
    type Weight = (CpuWeight, CudaWeight);
    type Tensor = (CpuTensor, CudaTensor);
    type Kv = (KvPool, CudaKv);
    type Step = (CpuStep, CudaStep);

    fn name(&self) -> String {
        format!("{} + {}", self.c.name(), self.g.name())
    }
    fn upload(&self, w: WeightRef) -> anyhow::Result<Self::Weight> {
        Ok((self.c.upload(w.clone())?, self.g.upload(w)?))
    }
    fn alloc(&self, rows: usize, cols: usize) -> Self::Tensor {
        (self.c.alloc(rows, cols), self.g.alloc(rows, cols))
    }
    fn alloc_kv(&self, n_slots: usize, kv_dim: usize) -> anyhow::Result<Self::Kv> {
        Ok((
            self.c.alloc_kv(n_slots, kv_dim)?,
            self.g.alloc_kv(n_slots, kv_dim)?,
        ))
    }
    fn begin_step(&self, step: &StepInfo) -> Self::Step {
        (self.c.begin_step(step), self.g.begin_step(step))
    }
    fn embed(&self, table: &Self::Weight, step: &Self::Step, scale: f32, out: &mut Self::Tensor) {
        self.c.embed(&table.0, &step.0, scale, &mut out.0);
        self.g.embed(&table.1, &step.1, scale, &mut out.1);
        self.check("embed", out);
    }
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        w: Option<&Self::Weight>,
        width: usize,
        eps: f32,
        out: &mut Self::Tensor,
    ) {
        self.c
            .rms_norm(&x.0, w.map(|w| &w.0), width, eps, &mut out.0);
        self.g
            .rms_norm(&x.1, w.map(|w| &w.1), width, eps, &mut out.1);
        self.check(&format!("rms_norm width {width}"), out);
    }
    fn matmul(&self, w: &Self::Weight, x: &Self::Tensor, out: &mut Self::Tensor) {
        self.c.matmul(&w.0, &x.0, &mut out.0);
        self.g.matmul(&w.1, &x.1, &mut out.1);
        self.check(
            &format!(
                "matmul {} {}x{} n_tok {}",
                w.1.ty(),
                out.0.cols,
                x.0.cols,
                x.0.rows
            ),
            out,
        );
    }
    fn add_bias(&self, x: &mut Self::Tensor, bias: &Self::Weight) {
        self.c.add_bias(&mut x.0, &bias.0);
        self.g.add_bias(&mut x.1, &bias.1);
        self.check("add_bias", x);
    }
    fn rope(
        &self,
        x: &mut Self::Tensor,
        head_dim: usize,
        rope: &RopeSpec,
        factors: Option<&Self::Weight>,
        step: &Self::Step,
    ) {
        self.c
            .rope(&mut x.0, head_dim, rope, factors.map(|f| &f.0), &step.0);
        self.g
            .rope(&mut x.1, head_dim, rope, factors.map(|f| &f.1), &step.1);
        self.check("rope", x);
    }
    fn kv_write(&self, k: &Self::Tensor, v: &Self::Tensor, kv: &mut Self::Kv, step: &Self::Step) {
        self.c.kv_write(&k.0, &v.0, &mut kv.0, &step.0);
        self.g.kv_write(&k.1, &v.1, &mut kv.1, &step.1);
        let (kg, vg) = self.g.read_kv(&kv.1);
        let diff = kg
            .iter()
            .zip(&kv.0.k)
            .filter(|(a, b)| **a != b.to_bits())
            .count()
            + vg.iter()
                .zip(&kv.0.v)
                .filter(|(a, b)| **a != b.to_bits())
                .count();
        let mut n = self.calls.borrow_mut();
        *n += 1;
        if diff > 0 {
            self.report.borrow_mut().push((
                *n,
                format!("kv_write: {diff} f16 values differ"),
                f64::INFINITY,
            ));
        }
    }
    fn attention(
        &self,
        q: &Self::Tensor,
        kv: &Self::Kv,
        geom: AttnGeom,
        step: &Self::Step,
        out: &mut Self::Tensor,
    ) {
        self.c.attention(&q.0, &kv.0, geom, &step.0, &mut out.0);
        self.g.attention(&q.1, &kv.1, geom, &step.1, &mut out.1);
        self.check(&format!("attention window {:?}", geom.window), out);
    }
    fn gated_act(&self, gate: &mut Self::Tensor, up: &Self::Tensor, kind: FfnKind) {
        self.c.gated_act(&mut gate.0, &up.0, kind);
        self.g.gated_act(&mut gate.1, &up.1, kind);
        self.check(&format!("gated_act {kind:?}"), gate);
    }
    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor) {
        self.c.add(&mut x.0, &y.0);
        self.g.add(&mut x.1, &y.1);
        self.check("add", x);
    }
    fn scale_by(&self, x: &mut Self::Tensor, s: &Self::Weight) {
        self.c.scale_by(&mut x.0, &s.0);
        self.g.scale_by(&mut x.1, &s.1);
        self.check("scale_by", x);
    }
    fn add_rms_norm(
        &self,
        x: &mut Self::Tensor,
        y: &Self::Tensor,
        w: Option<&Self::Weight>,
        width: usize,
        eps: f32,
        scale: Option<&Self::Weight>,
        tmp: &mut Self::Tensor,
    ) {
        self.c.add_rms_norm(
            &mut x.0,
            &y.0,
            w.map(|w| &w.0),
            width,
            eps,
            scale.map(|s| &s.0),
            &mut tmp.0,
        );
        self.g.add_rms_norm(
            &mut x.1,
            &y.1,
            w.map(|w| &w.1),
            width,
            eps,
            scale.map(|s| &s.1),
            &mut tmp.1,
        );
        self.check(&format!("add_rms_norm width {width}"), x);
    }
    fn scale(&self, x: &mut Self::Tensor, c: f32) {
        self.c.scale(&mut x.0, c);
        self.g.scale(&mut x.1, c);
        self.check("scale", x);
    }
    fn copy_cols(&self, src: &Self::Tensor, col0: usize, out: &mut Self::Tensor) {
        self.c.copy_cols(&src.0, col0, &mut out.0);
        self.g.copy_cols(&src.1, col0, &mut out.1);
        self.check("copy_cols", out);
    }
    fn gather_logit_rows(&self, x: &Self::Tensor, step: &Self::Step, out: &mut Self::Tensor) {
        self.c.gather_logit_rows(&x.0, &step.0, &mut out.0);
        self.g.gather_logit_rows(&x.1, &step.1, &mut out.1);
        self.check("gather_logit_rows", out);
    }
    fn softcap(&self, x: &mut Self::Tensor, cap: f32) {
        self.c.softcap(&mut x.0, cap);
        self.g.softcap(&mut x.1, cap);
        self.check("softcap", x);
    }
    fn copy(&self, src: &Self::Tensor, dst: &mut Self::Tensor) {
        self.c.copy(&src.0, &mut dst.0);
        self.g.copy(&src.1, &mut dst.1);
        self.check("copy", dst);
    }
    fn read(&self, x: &Self::Tensor) -> Vec<f32> {
        self.c.read(&x.0)
    }
}

#[test]
#[ignore = "needs CUDA"]
fn every_op_matches_inside_whole_models() {
    let mut cases = tiny_models();
    cases.extend(real_shaped_models());
    // The Gemma 3 / Gemma 4 oracle fixtures (PLE, KV sharing, k_eq_v, per-layer head_dim).
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures");
    let fixtures = if fixtures.is_dir() {
        fixtures
    } else {
        // A test binary carried to the GPU machine, run from a copy of the repository.
        std::path::PathBuf::from("crates/model/tests/fixtures")
    };
    for name in [
        "gemma4-ple-shared.f32",
        "gemma4-ple-shared.q8_0",
        "gemma4-k-eq-v.q8_0",
        "gemma3-swa.q8_0",
    ] {
        let f =
            kestrel_gguf::GgufFile::open(fixtures.join(format!("{name}.gguf"))).expect("fixture");
        cases.push((name, std::sync::Arc::new(f), 128));
    }
    let mut failures = Vec::new();
    for (label, f, vocab) in cases {
        let spec = kestrel_model::spec_from_gguf(&f).expect("spec");
        let g = gpu();
        // Op by op at 1e-5 is the matvecs' bound; the bf16 GEMM path of longer prompts is
        // checked against the CPU in tests/gemm.rs.
        g.set_gemm_rows(kestrel_cuda::GemmRows::OFF);
        // Prompts take the decode attention kernel here, the CPU's f16 chain to rounding flips;
        // the tensor-core prefill kernel (f32 accumulation, ~1e-3 from that chain) has its own
        // oracle test (tests/attention_prefill.rs) and runs inside models in tests/model.rs.
        g.set_prefill_min(usize::MAX);
        let dual = Dual {
            c: CpuBackend::new(),
            g,
            calls: RefCell::new(0),
            report: RefCell::new(Vec::new()),
        };
        let cfg = EngineConfig {
            n_ctx: 128,
            kv_tokens: 256,
        };
        let mut e = Engine::load(dual, spec, &f, cfg, &mut |_, _| {}).expect("engine");
        let s = e.new_seq();
        let prompt: Vec<u32> = (0..20u32).map(|i| (i * 7919 + 5) % vocab as u32).collect();
        let entries: Vec<BatchEntry> = BatchEntry::run(s, &prompt, true);
        e.step(&entries).expect("prefill");
        for t in [3u32, 99, 250].map(|t| t % vocab as u32) {
            e.step(&[BatchEntry::decode(s, t)]).expect("decode");
        }
        // A second sequence's prompt and the first one's decode in one step, then both decoding.
        let s2 = e.new_seq();
        let mut mixed: Vec<BatchEntry> = (0..5u32)
            .map(|i| BatchEntry {
                seq: s2,
                token: 11 + i,
                logits: i == 4,
                chunk: None,
            })
            .collect();
        mixed.push(BatchEntry::decode(s, 7));
        e.step(&mixed).expect("mixed step");
        e.step(&[BatchEntry::decode(s2, 1), BatchEntry::decode(s, 2)])
            .expect("batched decode");
        let rep = e.backend.report.borrow();
        println!(
            "{label}: {} op calls, {} above 1e-5",
            e.backend.calls.borrow(),
            rep.len()
        );
        for (n, op, err) in rep.iter().take(40) {
            println!("  #{n:<5} {op:<45} {err:.3e}");
            if *err > OP_TOL {
                failures.push(format!("{label} #{n} {op}: {err:.3e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "ops out of tolerance inside models:\n{}",
        failures.join("\n")
    );
}
