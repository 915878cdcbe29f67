// Gated FFN activations: gate = act(gate) * up, over n values.
// SiLU: x / (1 + exp(-x)), exp rounded once from double (as a correctly rounded f32 exp).
// GELU (tanh form) as the CPU backend (and llama.cpp's CPU backend) computes it: the input
// rounded to f16, the formula in f32, the result rounded to f16; 0 below -10 and x above 10.

extern "C" __global__ void silu_mul(float* g, const float* u, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float x = g[i];
        const float s = __fdiv_rn(x, __fadd_rn(1.0f, exp_f(-x)));
        g[i] = __fmul_rn(s, u[i]);
    }
}

__device__ __forceinline__ float gelu_tanh(float x) {
    const float inner = __fmul_rn(__fmul_rn(0.7978846f, x), __fadd_rn(1.0f, __fmul_rn(__fmul_rn(0.044715f, x), x)));
    return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, tanh_f(inner)));
}

extern "C" __global__ void gelu_mul(float* g, const float* u, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float x = g[i];
        float a;
        if (x <= -10.0f) a = 0.0f;
        else if (x >= 10.0f) a = x;
        else a = round_f16(gelu_tanh(round_f16(x)));
        g[i] = __fmul_rn(a, u[i]);
    }
}
