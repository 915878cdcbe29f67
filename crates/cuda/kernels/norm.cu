// RMS norm over each group of `width` values (a whole row, or one head), as ggml and the CPU
// backend compute it: the sum of squares in f64, 1/sqrt(mean + eps) in f32, (x * scale) * w.
// One block per group: grid = n_groups, blockDim a multiple of 32 (<= 1024).

extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, int width, float eps) {
    __shared__ double part[32];
    __shared__ float scale_sh;
    const u64 g = blockIdx.x;
    const float* xr = x + g * width;
    float* o = out + g * width;
    double s = 0.0;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        double v = (double)xr[i];
        s += v * v;  // exact square; an FMA here rounds identically
    }
    s = warp_sum_d(s);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) part[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double tot = 0.0;
        for (int k = 0; k < (int)(blockDim.x >> 5); ++k) tot += part[k];
        float mean = (float)(tot / (double)width);
        scale_sh = __frcp_rn(__fsqrt_rn(__fadd_rn(mean, eps)));
    }
    __syncthreads();
    const float scale = scale_sh;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float v = __fmul_rn(xr[i], scale);
        if (w) v = __fmul_rn(v, w[i]);
        o[i] = v;
    }
}
