// out[t][r] = sum_k W[r][k] * x[t][k] for quantized and float weights.
//
// Quantized weights pair with the activation formats the CPU backend uses (specs/quants.md §1),
// so both backends form the same integer sums and differ only in float summation order:
// Q4_0/Q5_0/Q8_0/Q4_1/Q5_1 with A32 blocks (the CPU's Q8_0 / Q8_1 d and codes), the K-quants
// with A256 blocks (its Q8_K); quantize.cu writes both, as arrays of codes, scales and sums.
// Offsets and mins are folded as on the CPU (§6): signed codes for Q4_0/Q5_0/Q3_K/Q6_K, the A32
// `s` field for Q4_1/Q5_1, the A256 per-16 sums for the K-quant mins.
//
// The generic kernels (every type; Q4_K, Q6_K, Q8_0 and Q4_0 run the 16-byte ones of mv.cu
// unless KESTREL_CUDA_FAST_MATVEC=0): one warp per weight row, 4 rows per 128-thread block,
// 32-element chunks per lane, 4-byte loads, tokens 8 at a time. The lane -> weight mapping and
// the order of each token's sums do not depend on the number of tokens: a token's result is the
// same bits whatever batch it runs in, which lets a padded, graph-replayed decode step match an
// eager one.

#define MV_NT 8
#define MV_WARPS 4

// Activations in the A32 / A256 layout: codes [n_tok][K]; A32: d, s f16 [n_tok][K/32];
// A256: d f32 [n_tok][K/256], sums int16 [n_tok][K/16].
struct Act {
    const i8* c;
    const void* d;
    const void* s;
};

// One 32-element weight chunk: codes in element order (word k = elements 4k..4k+3), scales.
struct WC {
    int q[8];
    float d, dm;
    int s0, s1, m0, m1;
};

enum { K_PLAIN = 0, K_MIN_S = 1, K_S16 = 2, K_K32MIN = 3, K_K16MIN = 4 };

// Bits 0..3 of x to bit 4 of bytes 0..3.
__device__ __forceinline__ u32 spread4(u32 x) {
    return ((x & 1u) << 4) | ((x & 2u) << 11) | ((x & 4u) << 18) | ((x & 8u) << 25);
}

template <int T> struct Ty;

template <> struct Ty<GT_Q4_0> {
    enum { KIND = K_PLAIN };
    static __device__ __forceinline__ void decode(const u8* row, int c, WC& w) {
        const u8* b = row + (u64)c * 18;
        w.d = ldh(b);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u32 v = ld32a2(b + 2 + 4 * k);
            w.q[k] = sub_bytes(v & 0x0F0F0F0Fu, 8);
            w.q[k + 4] = sub_bytes((v >> 4) & 0x0F0F0F0Fu, 8);
        }
    }
};

template <> struct Ty<GT_Q4_1> {
    enum { KIND = K_MIN_S };
    static __device__ __forceinline__ void decode(const u8* row, int c, WC& w) {
        const u8* b = row + (u64)c * 20;
        w.d = ldh(b);
        w.dm = ldh(b + 2);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u32 v = ld32(b + 4 + 4 * k);
            w.q[k] = (int)(v & 0x0F0F0F0Fu);
            w.q[k + 4] = (int)((v >> 4) & 0x0F0F0F0Fu);
        }
    }
};

template <> struct Ty<GT_Q5_0> {
    enum { KIND = K_PLAIN };
    static __device__ __forceinline__ void decode(const u8* row, int c, WC& w) {
        const u8* b = row + (u64)c * 22;
        w.d = ldh(b);
        const u32 qh = ld32a2(b + 2);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u32 v = ld32a2(b + 6 + 4 * k);
            w.q[k] = sub_bytes((v & 0x0F0F0F0Fu) | spread4(qh >> (4 * k)), 16);
            w.q[k + 4] = sub_bytes(((v >> 4) & 0x0F0F0F0Fu) | spread4(qh >> (16 + 4 * k)), 16);
        }
    }
};

template <> struct Ty<GT_Q5_1> {
    enum { KIND = K_MIN_S };
    static __device__ __forceinline__ void decode(const u8* row, int c, WC& w) {
        const u8* b = row + (u64)c * 24;
        w.d = ldh(b);
        w.dm = ldh(b + 2);
        const u32 qh = ld32(b + 4);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u32 v = ld32(b + 8 + 4 * k);
            w.q[k] = (int)((v & 0x0F0F0F0Fu) | spread4(qh >> (4 * k)));
            w.q[k + 4] = (int)(((v >> 4) & 0x0F0F0F0Fu) | spread4(qh >> (16 + 4 * k)));
        }
    }
};

template <> struct Ty<GT_Q8_0> {
    enum { KIND = K_PLAIN };
    static __device__ __forceinline__ void decode(const u8* row, int c, WC& w) {
        const u8* b = row + (u64)c * 34;
        w.d = ldh(b);
#pragma unroll
        for (int k = 0; k < 8; ++k) w.q[k] = (int)ld32a2(b + 2 + 4 * k);
    }
};

template <> struct Ty<GT_Q2_K> {
    enum { KIND = K_K16MIN };
    static __device__ __forceinline__ void decode(const u8* row, int c, WC& w) {
        const int j = c & 7, h = j >> 2, s = j & 3;
        const u8* b = row + (u64)(c >> 3) * 84;
#pragma unroll
        for (int k = 0; k < 8; ++k) w.q[k] = (int)((ld32(b + 16 + 32 * h + 4 * k) >> (2 * s)) & 0x03030303u);
        const int sm0 = b[2 * j], sm1 = b[2 * j + 1];
        w.s0 = sm0 & 0xF;
        w.m0 = sm0 >> 4;
        w.s1 = sm1 & 0xF;
        w.m1 = sm1 >> 4;
        w.d = ldh(b + 80);
        w.dm = ldh(b + 82);
    }
};

template <> struct Ty<GT_Q3_K> {
    enum { KIND = K_S16 };
    static __device__ __forceinline__ void decode(const u8* row, int c, WC& w) {
        const int j = c & 7, h = j >> 2, s = j & 3;
        const u8* b = row + (u64)(c >> 3) * 110;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const u32 lo = (ld32a2(b + 32 + 32 * h + 4 * k) >> (2 * s)) & 0x03030303u;
            const u32 hb = ((ld32a2(b + 4 * k) >> j) & 0x01010101u) << 2;
            w.q[k] = sub_bytes(lo | hb, 4);
        }
        w.s0 = q3k_scale(b + 96, 2 * j);
        w.s1 = q3k_scale(b + 96, 2 * j + 1);
        w.d = ldh(b + 108);
    }
};

template <> struct Ty<GT_Q4_K> {
    enum { KIND = K_K32MIN };
    static __device__ __forceinline__ void decode(const u8* row, int c, WC& w) {
        const int j = c & 7, p = j >> 1, t = j & 1;
        const u8* b = row + (u64)(c >> 3) * 144;
#pragma unroll
        for (int k = 0; k < 8; ++k) w.q[k] = (int)((ld32(b + 16 + 32 * p + 4 * k) >> (4 * t)) & 0x0F0F0F0Fu);
        k4_scale_min(b + 4, j, &w.s0, &w.m0);
        w.d = ldh(b);
        w.dm = ldh(b + 2);
    }
};

template <> struct Ty<GT_Q5_K> {
    enum { KIND = K_K32MIN };
    static __device__ __forceinline__ void decode(const u8* row, int c, WC& w) {
        const int j = c & 7, p = j >> 1, t = j & 1;
        const u8* b = row + (u64)(c >> 3) * 176;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const u32 lo = (ld32(b + 48 + 32 * p + 4 * k) >> (4 * t)) & 0x0F0F0F0Fu;
            const u32 hi = ((ld32(b + 16 + 4 * k) >> j) & 0x01010101u) << 4;
            w.q[k] = (int)(lo | hi);
        }
        k4_scale_min(b + 4, j, &w.s0, &w.m0);
        w.d = ldh(b);
        w.dm = ldh(b + 2);
    }
};

template <> struct Ty<GT_Q6_K> {
    enum { KIND = K_S16 };
    static __device__ __forceinline__ void decode(const u8* row, int c, WC& w) {
        const int j = c & 7, h = j >> 2, s = j & 3;
        const u8* b = row + (u64)(c >> 3) * 210;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const u32 lo = (ld32a2(b + 64 * h + 32 * (s & 1) + 4 * k) >> (4 * (s >> 1))) & 0x0F0F0F0Fu;
            const u32 hi = ((ld32a2(b + 128 + 32 * h + 4 * k) >> (2 * s)) & 0x03030303u) << 4;
            w.q[k] = sub_bytes(lo | hi, 32);
        }
        w.s0 = (i8)b[192 + 2 * j];
        w.s1 = (i8)b[192 + 2 * j + 1];
        w.d = ldh(b + 208);
    }
};

// One weight chunk against chunk `c` of token row `t`'s activations.
template <int KIND> __device__ __forceinline__ float dot_chunk(const WC& w, const Act& a, u64 t, int nchunks, int c) {
    const u64 bi = t * nchunks + c;
    const int* x = (const int*)(a.c + bi * 32);
    int i0 = 0, i1 = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        i0 = dp4a(w.q[k], x[k], i0);
        i1 = dp4a(w.q[k + 4], x[k + 4], i1);
    }
    if (KIND == K_PLAIN) return (w.d * h2f(((const u16*)a.d)[bi])) * (float)(i0 + i1);
    if (KIND == K_MIN_S)
        return (w.d * h2f(((const u16*)a.d)[bi])) * (float)(i0 + i1) + w.dm * h2f(((const u16*)a.s)[bi]);
    const float da = ((const float*)a.d)[t * (nchunks >> 3) + (c >> 3)];
    if (KIND == K_S16) return (w.d * da) * (float)(w.s0 * i0 + w.s1 * i1);
    const short* bs = (const short*)a.s + bi * 2;
    const int b0 = bs[0], b1 = bs[1];
    if (KIND == K_K32MIN) return da * (w.d * (float)(w.s0 * (i0 + i1)) - w.dm * (float)(w.m0 * (b0 + b1)));
    return da * (w.d * (float)(w.s0 * i0 + w.s1 * i1) - w.dm * (float)(w.m0 * b0 + w.m1 * b1));
}

template <int T>
__device__ __forceinline__ void matvec_q(const u8* W, u64 row_bytes, int rows, int nchunks, const Act a,
                                         float* out, int n_tok) {
    PDL_START();
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;  // uniform per warp
    const u8* wr = W + (u64)row * row_bytes;
    for (int t0 = 0; t0 < n_tok; t0 += MV_NT) {
        float acc[MV_NT];
#pragma unroll
        for (int t = 0; t < MV_NT; ++t) acc[t] = 0.0f;
        for (int c = lane; c < nchunks; c += 32) {
            WC w;
            Ty<T>::decode(wr, c, w);
#pragma unroll
            for (int t = 0; t < MV_NT; ++t)
                if (t0 + t < n_tok)
                    acc[t] += dot_chunk<Ty<T>::KIND>(w, a, t0 + t, nchunks, c);
        }
#pragma unroll
        for (int t = 0; t < MV_NT; ++t) {
            const float v = warp_sum(acc[t]);
            if (lane == 0 && t0 + t < n_tok) out[(u64)(t0 + t) * rows + row] = v;
        }
    }
}

template <int T> __device__ __forceinline__ float load_wf(const u8* row, int i);
template <> __device__ __forceinline__ float load_wf<GT_F32>(const u8* row, int i) { return ((const float*)row)[i]; }
template <> __device__ __forceinline__ float load_wf<GT_F16>(const u8* row, int i) { return ldh(row + 2 * i); }
template <> __device__ __forceinline__ float load_wf<GT_BF16>(const u8* row, int i) { return bf2f(ld16(row + 2 * i)); }

// 16 bytes of a float row: 4 (F32) or 8 (F16, BF16) values.
template <int T> struct FVec { static constexpr int N = 8; };
template <> struct FVec<GT_F32> { static constexpr int N = 4; };
template <int T> __device__ __forceinline__ void load_wv(const u8* p, float* w) {
    const uint4 r = *(const uint4*)p;
    const u32 q[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        if (T == GT_F32) {
            w[k] = __uint_as_float(q[k]);
        } else if (T == GT_F16) {
            w[2 * k] = h2f((u16)(q[k] & 0xffff));
            w[2 * k + 1] = h2f((u16)(q[k] >> 16));
        } else {
            w[2 * k] = bf2f((u16)(q[k] & 0xffff));
            w[2 * k + 1] = bf2f((u16)(q[k] >> 16));
        }
    }
}

template <int T>
__device__ __forceinline__ void matvec_f(const u8* W, u64 row_bytes, int rows, int cols, const float* x, float* out,
                                         int n_tok) {
    PDL_START();
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const u8* wr = W + (u64)row * row_bytes;
    constexpr int V = FVec<T>::N;
    constexpr int E = 16 / V;  // bytes per value
    // Aligned rows (every GGUF float matrix whose row is a multiple of 16 bytes) read 16 bytes
    // per lane and load: a lane takes V consecutive values per chunk, chunks 32 · V apart, in
    // order, then the warp sums. The order depends on the shape only, never on n_tok.
    // (Per-value 2-byte loads left the F16 per-layer-embedding projection, 55 MB, far below the
    // memory bandwidth.) Other rows keep one value per lane and step.
    const bool vec = cols % V == 0 && row_bytes % 16 == 0 && ((u64)W & 15) == 0 && ((u64)x & 15) == 0;
    if (vec) {
        for (int t0 = 0; t0 < n_tok; t0 += MV_NT) {
            float acc[MV_NT];
#pragma unroll
            for (int t = 0; t < MV_NT; ++t) acc[t] = 0.0f;
#pragma unroll 4
            for (int c = lane * V; c < cols; c += 32 * V) {
                float w[V];
                load_wv<T>(wr + (u64)c * E, w);
#pragma unroll
                for (int t = 0; t < MV_NT; ++t) {
                    if (t0 + t < n_tok) {
                        const float4* xp = (const float4*)(x + (u64)(t0 + t) * cols + c);
#pragma unroll
                        for (int k4 = 0; k4 < V / 4; ++k4) {
                            const float4 xv = xp[k4];
                            acc[t] = fmaf(w[4 * k4], xv.x, acc[t]);
                            acc[t] = fmaf(w[4 * k4 + 1], xv.y, acc[t]);
                            acc[t] = fmaf(w[4 * k4 + 2], xv.z, acc[t]);
                            acc[t] = fmaf(w[4 * k4 + 3], xv.w, acc[t]);
                        }
                    }
                }
            }
#pragma unroll
            for (int t = 0; t < MV_NT; ++t) {
                const float v = warp_sum(acc[t]);
                if (lane == 0 && t0 + t < n_tok) out[(u64)(t0 + t) * rows + row] = v;
            }
        }
        return;
    }
    for (int t0 = 0; t0 < n_tok; t0 += MV_NT) {
        float acc[MV_NT];
#pragma unroll
        for (int t = 0; t < MV_NT; ++t) acc[t] = 0.0f;
        for (int i = lane; i < cols; i += 32) {
            const float w = load_wf<T>(wr, i);
#pragma unroll
            for (int t = 0; t < MV_NT; ++t)
                if (t0 + t < n_tok) acc[t] = fmaf(w, x[(u64)(t0 + t) * cols + i], acc[t]);
        }
#pragma unroll
        for (int t = 0; t < MV_NT; ++t) {
            const float v = warp_sum(acc[t]);
            if (lane == 0 && t0 + t < n_tok) out[(u64)(t0 + t) * rows + row] = v;
        }
    }
}

#define MATVEC_Q(name, T)                                                                               \
    extern "C" __global__ void name(const u8* W, u64 row_bytes, int rows, int nchunks, const i8* xc,    \
                                    const void* xd, const void* xs, float* out, int n_tok) {            \
        matvec_q<T>(W, row_bytes, rows, nchunks, Act{xc, xd, xs}, out, n_tok);                          \
    }
#define MATVEC_F(name, T)                                                                               \
    extern "C" __global__ void name(const u8* W, u64 row_bytes, int rows, int cols, const float* x,     \
                                    float* out, int n_tok) {                                            \
        matvec_f<T>(W, row_bytes, rows, cols, x, out, n_tok);                                           \
    }

MATVEC_Q(matvec_q4_0, GT_Q4_0)
MATVEC_Q(matvec_q4_1, GT_Q4_1)
MATVEC_Q(matvec_q5_0, GT_Q5_0)
MATVEC_Q(matvec_q5_1, GT_Q5_1)
MATVEC_Q(matvec_q8_0, GT_Q8_0)
MATVEC_Q(matvec_q2_k, GT_Q2_K)
MATVEC_Q(matvec_q3_k, GT_Q3_K)
MATVEC_Q(matvec_q4_k, GT_Q4_K)
MATVEC_Q(matvec_q5_k, GT_Q5_K)
MATVEC_Q(matvec_q6_k, GT_Q6_K)
MATVEC_F(matvec_f32, GT_F32)
MATVEC_F(matvec_f16, GT_F16)
MATVEC_F(matvec_bf16, GT_BF16)
