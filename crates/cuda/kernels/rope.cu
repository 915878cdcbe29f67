// Rotary position embedding, in place on x [n_tokens, cols] (heads of head_dim), at the step's
// positions (device array). Angles as ggml and the CPU backend: theta_i = pos * theta_scale^i by
// repeated f32 multiplication (theta_scale = base^(-2/n_rot), computed on the host in f32),
// divided by the optional freq factor, times freq_scale; cos/sin rounded once from double.
// NeoX pairs (i, i + n_rot/2), otherwise adjacent pairs (2i, 2i+1); dims >= n_rot untouched.
// grid = (n_tokens, n_heads): each block computes its token's angles and rotates one head (the
// angles are recomputed per head: cheap, and a decode step gets n_heads blocks, not one).
// Dynamic shared memory = n_rot floats.

extern "C" __global__ void rope(float* x, int cols, int head_dim, int n_rot, float theta_scale,
                                float freq_scale, int neox, const float* factors, const u32* positions) {
    extern __shared__ float cs[];
    PDL_START();
    const int t = blockIdx.x, h = blockIdx.y;
    const int half = n_rot / 2;
    const float pos = (float)positions[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float theta = pos;
        for (int j = 0; j < i; ++j) theta = __fmul_rn(theta, theta_scale);
        const float ff = factors ? factors[i] : 1.0f;
        const float a = __fmul_rn(freq_scale, __fdiv_rn(theta, ff));
        double sd, cd;
        sincos((double)a, &sd, &cd);
        cs[i] = (float)cd;
        cs[half + i] = (float)sd;
    }
    __syncthreads();
    float* hp = x + (u64)t * cols + (u64)h * head_dim;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const int a = neox ? i : 2 * i;
        const int b = neox ? i + half : 2 * i + 1;
        const float x0 = hp[a], x1 = hp[b];
        const float c = cs[i], s = cs[half + i];
        hp[a] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        hp[b] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    }
}
