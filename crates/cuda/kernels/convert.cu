// Conversions to bf16 for the tensor-core GEMM path (ops/gemm.rs): weights of every matmul type
// dequantized to bf16, and f32 activations rounded to bf16. Both write rows of `ld` values
// (`ld` = cols rounded up to 8, so every row starts 16-byte aligned, as cuBLAS likes), the
// padding zeroed, 8 values (one 16-byte store) per thread.
//
// A weight value is dequant.cuh's `dequant_elem` (bit-identical to kestrel_gguf's reference
// dequantizer, repacked Q6_K / Q8_0 / Q4_0 rows included) rounded to the nearest bf16, ties to even:
// exactly `half::bf16::from_f32` of the reference f32.

// f32 -> bf16 bits, round to nearest even (NaN stays a quiet NaN, as half::bf16::from_f32 does).
__device__ __forceinline__ u32 f2bf(float f) {
    const u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

__device__ __forceinline__ void store8(u16* out, const float* v) {
    uint4 p;
    p.x = f2bf(v[0]) | (f2bf(v[1]) << 16);
    p.y = f2bf(v[2]) | (f2bf(v[3]) << 16);
    p.z = f2bf(v[4]) | (f2bf(v[5]) << 16);
    p.w = f2bf(v[6]) | (f2bf(v[7]) << 16);
    *(uint4*)out = p;
}

// Eight values from column c0 of one row, any type (zero past `cols`).
template <int TY>
__device__ __forceinline__ void deq8_generic(const u8* row, int c0, int cols, float* v) {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = c0 + j < cols ? dequant_elem(TY, row, c0 + j, cols) : 0.0f;
}

// Fast paths for the types of Q4_K_M / Q6_K / Q8_0 models: the block's scales decoded once for
// the eight values, the same float operations as dequant_elem (so the same bits).
template <int TY>
__device__ __forceinline__ void deq8(const u8* row, int c0, int cols, float* v) {
    deq8_generic<TY>(row, c0, cols, v);
}

template <>
__device__ __forceinline__ void deq8<GT_Q4_K>(const u8* row, int c0, int cols, float* v) {
    const u8* b = row + (c0 >> 8) * 144;
    const int k = c0 & 255, p = k >> 6, t = (k >> 5) & 1, l = k & 31;
    int sc, m;
    k4_scale_min(b + 4, k >> 5, &sc, &m);
    const float d = __fmul_rn(ldh(b), (float)sc), dm = __fmul_rn(ldh(b + 2), (float)m);
    const uint2 q = *(const uint2*)(b + 16 + 32 * p + l);  // l is a multiple of 8
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const u32 w = j < 4 ? q.x : q.y;
        const int c = (w >> (8 * (j & 3) + 4 * t)) & 0xF;
        v[j] = __fsub_rn(__fmul_rn(d, (float)c), dm);
    }
}

template <>
__device__ __forceinline__ void deq8<GT_Q8_0_R>(const u8* row, int c0, int cols, float* v) {
    const int nb = cols >> 5;
    const float d = ldh(row + nb * 32 + 2 * (c0 >> 5));
    const uint2 q = *(const uint2*)(row + c0);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const u32 w = j < 4 ? q.x : q.y;
        v[j] = __fmul_rn(d, (float)(int)(i8)(w >> (8 * (j & 3))));
    }
}

template <>
__device__ __forceinline__ void deq8<GT_Q6_K_R>(const u8* row, int c0, int cols, float* v) {
    const int nb = cols >> 8, b = c0 >> 8;
    const int k = c0 & 255, h = k >> 7, s = (k >> 5) & 3, l = k & 31, g = l >> 4, li = l & 15;
    const u8* unit = row + 48 * (4 * b + 2 * h + g);
    const float d = __fmul_rn(ldh(row + nb * 208 + 2 * b), (float)(i8)row[nb * 192 + 16 * b + (k >> 4)]);
    const uint2 lo = *(const uint2*)(unit + 16 * (s & 1) + li);
    const uint2 hi = *(const uint2*)(unit + 32 + li);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const u32 wl = j < 4 ? lo.x : lo.y, wh = j < 4 ? hi.x : hi.y;
        const int lo4 = (wl >> (8 * (j & 3) + 4 * (s >> 1))) & 0xF;
        const int hi2 = (wh >> (8 * (j & 3) + 2 * s)) & 3;
        v[j] = __fmul_rn(d, (float)((lo4 | (hi2 << 4)) - 32));
    }
}

template <int TY>
__device__ __forceinline__ void dequant_rows(const u8* W, u64 row_bytes, int cols, int ld, u16* out, u64 n_groups) {
    const int gpr = ld >> 3;
    for (u64 g = (u64)blockIdx.x * blockDim.x + threadIdx.x; g < n_groups; g += (u64)gridDim.x * blockDim.x) {
        const u64 r = g / gpr;
        const int c0 = (int)(g - r * gpr) << 3;
        const u8* row = W + r * row_bytes;
        float v[8];
        // The fast paths need the eight values inside one block row (cols a multiple of 32).
        if (c0 + 8 <= cols)
            deq8<TY>(row, c0, cols, v);
        else
            deq8_generic<TY>(row, c0, cols, v);
        store8(out + r * ld + c0, v);
    }
}

// out[r][c] = bf16(W[r][c]) for `rows` rows of W (`row_bytes` apart, type id `ty` as
// CudaWeight::kernel_type), c < cols; 0 for cols <= c < ld. n_groups = rows * ld / 8.
extern "C" __global__ void dequant_bf16(int ty, const u8* W, u64 row_bytes, int cols, int ld, u16* out, u64 n_groups) {
    PDL_START();  // `out` may be scratch a predecessor still reads
    switch (ty) {
    case GT_F32: dequant_rows<GT_F32>(W, row_bytes, cols, ld, out, n_groups); break;
    case GT_F16: dequant_rows<GT_F16>(W, row_bytes, cols, ld, out, n_groups); break;
    case GT_BF16: dequant_rows<GT_BF16>(W, row_bytes, cols, ld, out, n_groups); break;
    case GT_Q4_0: dequant_rows<GT_Q4_0>(W, row_bytes, cols, ld, out, n_groups); break;
    case GT_Q4_1: dequant_rows<GT_Q4_1>(W, row_bytes, cols, ld, out, n_groups); break;
    case GT_Q5_0: dequant_rows<GT_Q5_0>(W, row_bytes, cols, ld, out, n_groups); break;
    case GT_Q5_1: dequant_rows<GT_Q5_1>(W, row_bytes, cols, ld, out, n_groups); break;
    case GT_Q8_0: dequant_rows<GT_Q8_0>(W, row_bytes, cols, ld, out, n_groups); break;
    case GT_Q2_K: dequant_rows<GT_Q2_K>(W, row_bytes, cols, ld, out, n_groups); break;
    case GT_Q3_K: dequant_rows<GT_Q3_K>(W, row_bytes, cols, ld, out, n_groups); break;
    case GT_Q4_K: dequant_rows<GT_Q4_K>(W, row_bytes, cols, ld, out, n_groups); break;
    case GT_Q5_K: dequant_rows<GT_Q5_K>(W, row_bytes, cols, ld, out, n_groups); break;
    case GT_Q6_K: dequant_rows<GT_Q6_K>(W, row_bytes, cols, ld, out, n_groups); break;
    case GT_Q8_0_R: dequant_rows<GT_Q8_0_R>(W, row_bytes, cols, ld, out, n_groups); break;
    case GT_Q6_K_R: dequant_rows<GT_Q6_K_R>(W, row_bytes, cols, ld, out, n_groups); break;
    case GT_Q4_0_R: dequant_rows<GT_Q4_0_R>(W, row_bytes, cols, ld, out, n_groups); break;
    default: break;
    }
}

// out[r][c] = bf16(x[r][c]) (x f32 rows of `cols`), 0 for cols <= c < ld. n_groups = rows * ld / 8.
extern "C" __global__ void f32_to_bf16(const float* x, int cols, int ld, u16* out, u64 n_groups) {
    PDL_START();
    const int gpr = ld >> 3;
    for (u64 g = (u64)blockIdx.x * blockDim.x + threadIdx.x; g < n_groups; g += (u64)gridDim.x * blockDim.x) {
        const u64 r = g / gpr;
        const int c0 = (int)(g - r * gpr) << 3;
        const float* xr = x + r * cols;
        float v[8];
        if ((cols & 3) == 0 && c0 + 8 <= cols) {
            const float4 a = *(const float4*)(xr + c0), b = *(const float4*)(xr + c0 + 4);
            v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
            v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
        } else {
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = c0 + j < cols ? xr[c0 + j] : 0.0f;
        }
        store8(out + r * ld + c0, v);
    }
}
