// f32 activations -> 8-bit activation blocks for the matvecs, in the two GPU layouts (struct of
// arrays, so codes can be read 16 bytes at a time; ops/matmul.rs `ActFmt`):
//
//   A32  (pairs with Q4_0/Q4_1/Q5_0/Q5_1/Q8_0): per 32 values an f16 d, an f16 s, 32 int8 codes;
//        the CPU backend's Q8_0/Q8_1 rule (kestrel_cpu::quant_dot::acts, llama.cpp's x86 one):
//        d = amax/127, q = nearest-even(x * (127/amax)), s = fp16(d_f32 * sum(q)) (Q8_0 has no
//        s; the Q8_0-paired kernels never read it).
//   A256 (pairs with the K-quants): per 256 values an f32 d, 256 int8 codes, 16 int16 sums of 16
//        codes; the Q8_K rule (quantize_q8_k, the CPU's `Q8kSign::First`): the largest magnitude (first on ties) maps to -127,
//        iscale = -127 / vmax, q = nearest-even(iscale * x) clamped, d = 1 / iscale; an all-zero
//        block is all zeros.
//
// Codes, scales and sums are bit-identical to the CPU backend's blocks (only the layout differs:
// codes [n_blocks * B] contiguous, then the scales, then the s/sum arrays). The per-warp
// quantizers are in q8.cuh, shared with the fused producers (norm.cu, act.cu).

// n_blocks blocks of 32 values from x (contiguous rows; cols a multiple of 32): one warp each.
extern "C" __global__ void quantize_a32(const float* x, i8* codes, u16* d, u16* s, u64 n_blocks) {
    PDL_START();
    const u64 b = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (b >= n_blocks) return;  // uniform per warp
    q8_32_warp(x[b * 32 + lane], lane, codes + b * 32, d + b, s + b);
}

// n_blocks blocks of 256 values from x (contiguous rows; cols a multiple of 256): one warp each.
extern "C" __global__ void quantize_a256(const float* x, i8* codes, float* d, short* sums, u64 n_blocks) {
    PDL_START();
    const u64 b = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (b >= n_blocks) return;  // uniform per warp
    const float4* xb = (const float4*)(x + b * 256 + lane * 8);
    const float4 v0 = xb[0], v1 = xb[1];
    const float v[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
    q8_256_warp(v, lane, codes + b * 256, d + b, sums + b * 16);
}
