// RMS norm over each group of `width` values (a whole row, or one head), as ggml and the CPU
// backend compute it: the sum of squares in f64, 1/sqrt(mean + eps) in f32, (x * scale) * w.
// One block per group: grid = n_groups, blockDim a multiple of 32 (<= 1024).
//
// rms_norm runs one block per group (per-head norms); whole rows take rms_norm_row below, and
// rms_norm_a32 / rms_norm_a256, which also quantize the row they write into the next matmul's
// 8-bit activation blocks (q8.cuh; the `out` values are quantized exactly as quantize.cu would
// read them back, so the result is bit-identical to rms_norm_row + quantize). The row kernels
// also take the post-norm residual (x += norm(y) · w, x *= post[0]) of `add_rms_norm`.

__device__ __forceinline__ float rms_scale(const float* xr, int width, float eps) {
    __shared__ double part[32];
    __shared__ float scale_sh;
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
    return scale_sh;
}

__device__ __forceinline__ float norm_val(const float* xr, const float* w, int i, float scale) {
    float v = __fmul_rn(xr[i], scale);
    if (w) v = __fmul_rn(v, w[i]);
    return v;
}

extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, int width, float eps) {
    PDL_START();
    const u64 g = blockIdx.x;
    const float* xr = x + g * width;
    float* o = out + g * width;
    const float scale = rms_scale(xr, width, eps);
    for (int i = threadIdx.x; i < width; i += blockDim.x) o[i] = norm_val(xr, w, i, scale);
}

// The post-norm residual of `add_rms_norm` (res == out, each value read and written by one
// thread): the same two roundings as the separate `add` and `scale_by` kernels. Both null for a
// plain norm.
__device__ __forceinline__ float residual(float v, const float* res, const float* post, u64 i) {
    if (res) v = __fadd_rn(res[i], v);
    if (post) v = __fmul_rn(v, post[0]);
    return v;
}

// Whole rows (decode has one row per token: one block per row would leave the GPU idle):
// grid = (rows, ceil(width / NORM_SLICE)), NORM_SLICE threads. Every block sums the whole row's
// squares (the same order in every block and in the fused variants below, so all agree bit for
// bit) and writes its slice of NORM_SLICE values.
#define NORM_SLICE 256

extern "C" __global__ void __launch_bounds__(NORM_SLICE)
rms_norm_row(const float* x, const float* w, float* out, int width, float eps, const float* res,
             const float* post) {
    PDL_START();
    const u64 g = blockIdx.x;
    const float* xr = x + g * width;
    const float scale = rms_scale(xr, width, eps);
    const int i = blockIdx.y * NORM_SLICE + threadIdx.x;
    if (i < width) out[g * width + i] = residual(norm_val(xr, w, i, scale), res, post, g * width + i);
}

// rms_norm_row + the slice's A32 blocks (codes [rows][width], d and s [rows][width / 32]): one
// warp per block of 32.
extern "C" __global__ void __launch_bounds__(NORM_SLICE)
rms_norm_a32(const float* x, const float* w, float* out, int width, float eps, const float* res, const float* post,
             i8* codes, u16* d, u16* s) {
    PDL_START();
    const u64 g = blockIdx.x;
    const float* xr = x + g * width;
    const float scale = rms_scale(xr, width, eps);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int b = blockIdx.y * (NORM_SLICE / 32) + warp;
    if (b < width / 32) {  // uniform per warp
        const int i = 32 * b + lane;
        const float v = residual(norm_val(xr, w, i, scale), res, post, g * width + i);
        out[g * width + i] = v;
        const u64 bb = g * (width / 32) + b;
        q8_32_warp(v, lane, codes + bb * 32, d + bb, s + bb);
    }
}

// rms_norm_row + the slice's A256 block (codes [rows][width], d [rows][width / 256], sums
// [rows][width / 16]): the first warp quantizes it, 8 values per lane. width % 256 == 0.
extern "C" __global__ void __launch_bounds__(NORM_SLICE)
rms_norm_a256(const float* x, const float* w, float* out, int width, float eps, const float* res,
              const float* post, i8* codes, float* d, short* sums) {
    PDL_START();
    const u64 g = blockIdx.x;
    const float* xr = x + g * width;
    const float scale = rms_scale(xr, width, eps);
    const int lane = threadIdx.x & 31;
    if (threadIdx.x < 32) {
        const int i0 = NORM_SLICE * blockIdx.y + 8 * lane;
        float v[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            v[k] = residual(norm_val(xr, w, i0 + k, scale), res, post, g * width + i0 + k);
            out[g * width + i0 + k] = v[k];
        }
        const u64 bb = g * (width / 256) + blockIdx.y;
        q8_256_warp(v, lane, codes + bb * 256, d + bb, sums + bb * 16);
    }
}
