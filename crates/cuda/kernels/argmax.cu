// out[r] = the index of the largest value of row r of x (rows of `cols`), the lowest index on
// ties, as the CPU sampler's argmax picks (NaNs never win). One block of ARGMAX_THREADS per row.

#define ARGMAX_THREADS 1024

__device__ __forceinline__ void better(float& v, int& i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS) argmax_rows(const float* x, int cols, u32* out) {
    PDL_START();
    __shared__ float sv[32];
    __shared__ int si[32];
    const float* xr = x + (u64)blockIdx.x * cols;
    float v = -KS_INF;
    int i = 0x7fffffff;
    for (int c = threadIdx.x; c < cols; c += ARGMAX_THREADS) {
        const float y = xr[c];
        if (y > v) {  // strictly greater: the first (lowest) index of this thread's maximum
            v = y;
            i = c;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
        sv[warp] = v;
        si[warp] = i;
    }
    __syncthreads();
    if (warp == 0) {
        v = sv[lane];
        i = si[lane];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
        if (lane == 0) out[blockIdx.x] = i == 0x7fffffff ? 0u : (u32)i;
    }
}
