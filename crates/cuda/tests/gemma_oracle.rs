//! Tiny Gemma 3 / Gemma 4 models on the CUDA backend against Hugging Face transformers' logits:
//! the CPU's `tests/gemma_oracle.rs` checks (`cpu/tests/oracle/mod.rs`) on the GPU. The CUDA
//! kernels round as the CPU's default (llama.cpp) precision does — f16 K/V, Q and V accumulator
//! — but evaluate GELU with the formula and quantize activations to Q8_1, so the bounds are the
//! CPU's llama.cpp-rounding ones. Measured on an H200 (max |logit error|, f32 / q8_0 files):
//! gemma4-ple-shared 3.3e-2 / 9.1e-1, gemma4-k-eq-v 6.2e-3 / 1.6e-1, gemma3-swa 3.7e-3 / 1.4e-1,
//! greedy tokens equal to the oracle's. Run on a GPU machine:
//! `cargo test --release -p kestrel-cuda --test gemma_oracle -- --include-ignored`.

#[path = "../../cpu/tests/oracle/mod.rs"]
mod oracle;

#[test]
#[ignore = "needs CUDA"]
fn cuda_matches_the_hf_oracle() {
    let gpu =
        || kestrel_cuda::CudaBackend::new(0).unwrap_or_else(|e| panic!("CUDA backend: {e:#}"));
    oracle::check_all(gpu, |model, kind| match (model, kind) {
        (_, "f32") => 6e-2,
        ("gemma4-ple-shared", _) => 1.2,
        _ => 0.35,
    });
}
