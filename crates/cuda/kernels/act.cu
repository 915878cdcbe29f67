// Gated FFN activations: gate = act(gate) * up, over n values.
// SiLU: x / (1 + exp(-x)), exp rounded once from double (as a correctly rounded f32 exp).
// GELU (tanh form) as the CPU backend (and llama.cpp's CPU backend) computes it: the input
// rounded to f16, the formula in f32, the result rounded to f16; 0 below -10 and x above 10.
//
// The *_a32 / *_a256 variants also quantize the result into the down projection's 8-bit
// activation blocks (q8.cuh), one warp per block of 32 / 256 values: bit-identical to the plain
// kernel followed by quantize.cu.

__device__ __forceinline__ float silu_f(float x) { return __fdiv_rn(x, __fadd_rn(1.0f, exp_f(-x))); }

__device__ __forceinline__ float gelu_tanh(float x) {
    const float inner = __fmul_rn(__fmul_rn(0.7978846f, x), __fadd_rn(1.0f, __fmul_rn(__fmul_rn(0.044715f, x), x)));
    return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, tanh_f(inner)));
}

__device__ __forceinline__ float gelu_f(float x) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    return round_f16(gelu_tanh(round_f16(x)));
}

template <int GELU> __device__ __forceinline__ float gated(float g, float u) {
    return __fmul_rn(GELU ? gelu_f(g) : silu_f(g), u);
}

extern "C" __global__ void silu_mul(float* g, const float* u, u64 n) {
    PDL_START();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        g[i] = gated<0>(g[i], u[i]);
}

extern "C" __global__ void gelu_mul(float* g, const float* u, u64 n) {
    PDL_START();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        g[i] = gated<1>(g[i], u[i]);
}

template <int GELU>
__device__ __forceinline__ void gated_a32(float* g, const float* u, u64 n_blocks, i8* codes, u16* d, u16* s) {
    PDL_START();
    const u64 b = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (b >= n_blocks) return;  // uniform per warp
    const u64 i = b * 32 + lane;
    const float v = gated<GELU>(g[i], u[i]);
    g[i] = v;
    q8_32_warp(v, lane, codes + b * 32, d + b, s + b);
}

template <int GELU>
__device__ __forceinline__ void gated_a256(float* g, const float* u, u64 n_blocks, i8* codes, float* d, short* sums) {
    PDL_START();
    const u64 b = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (b >= n_blocks) return;  // uniform per warp
    const u64 i0 = b * 256 + lane * 8;
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        v[k] = gated<GELU>(g[i0 + k], u[i0 + k]);
        g[i0 + k] = v[k];
    }
    q8_256_warp(v, lane, codes + b * 256, d + b, sums + b * 16);
}

extern "C" __global__ void silu_mul_a32(float* g, const float* u, u64 nb, i8* c, u16* d, u16* s) { gated_a32<0>(g, u, nb, c, d, s); }
extern "C" __global__ void gelu_mul_a32(float* g, const float* u, u64 nb, i8* c, u16* d, u16* s) { gated_a32<1>(g, u, nb, c, d, s); }
extern "C" __global__ void silu_mul_a256(float* g, const float* u, u64 nb, i8* c, float* d, short* s) { gated_a256<0>(g, u, nb, c, d, s); }
extern "C" __global__ void gelu_mul_a256(float* g, const float* u, u64 nb, i8* c, float* d, short* s) { gated_a256<1>(g, u, nb, c, d, s); }
