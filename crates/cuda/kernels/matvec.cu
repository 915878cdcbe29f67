// out[t][r] = sum_k W[r][k] * x[t][k] for quantized and float weights.
//
// Quantized weights pair with the activation formats the CPU backend uses (specs/quants.md §1),
// so both backends form the same integer sums and differ only in float summation order:
// Q4_0/Q5_0/Q8_0/Q4_1/Q5_1 with A32 blocks (the CPU's Q8_0 / Q8_1 d and codes), the K-quants
// with A256 blocks (its Q8_K); quantize.cu writes both, as arrays of codes, scales and sums.
// Offsets and mins are folded as on the CPU (§6): signed codes for Q4_0/Q5_0/Q3_K/Q6_K, the A32
// `s` field for Q4_1/Q5_1, the A256 per-16 sums for the K-quant mins.
//
// Two families of kernels, both one warp per weight row, 4 rows per 128-thread block:
// - mv_q4_k, mv_q6_kr, mv_q8_0r (the types of Q4_K_M / Q6_K / Q8_0 models): 16-byte loads of
//   the weights (Q6_K and Q8_0 rows repacked at upload, ops/matmul.rs `repack`), U units per
//   lane in flight, weight-stationary over NT tokens (NT = 1, 2, 4, 8: each weight unit is
//   decoded once for NT tokens; more tokens loop over groups of 8).
// - matvec_<type> (every type, and the fallback): 32-element chunks per lane, 4-byte loads,
//   tokens 8 at a time.
// In both, the lane -> weight mapping and the order of each token's sums do not depend on the
// number of tokens (and the 16-byte kernels spell their roundings out, so no instantiation can
// contract differently): a token's result is the same bits whatever batch it runs in, which lets
// a padded, graph-replayed decode step match an eager one.

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

template <int T>
__device__ __forceinline__ void matvec_f(const u8* W, u64 row_bytes, int rows, int cols, const float* x, float* out,
                                         int n_tok) {
    PDL_START();
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const u8* wr = W + (u64)row * row_bytes;
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

// ---- 16-byte kernels -------------------------------------------------------------------------

__device__ __forceinline__ int byte_of(u32 w, int k) { return (int)((w >> (8 * k)) & 0xFFu); }

// Sum of the four int8x4 products of 16 weight codes and 16 activation codes.
__device__ __forceinline__ int dot16(const int* w, const int4 a) {
    return dp4a(w[3], a.w, dp4a(w[2], a.z, dp4a(w[1], a.y, dp4a(w[0], a.x, 0))));
}

// Q4_K (144-byte blocks: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of
// nibbles; blocks are 16-byte aligned as uploaded). A segment is 16 bytes of nibbles: segment
// j = 2p + h of a block holds, in its low nibbles, elements 64p + 16h .. +16 (sub-block 2p) and in
// its high nibbles elements 64p + 32 + 16h .. +16 (sub-block 2p + 1). Lane l takes segments
// l, l + 32, ... of the row (8 lanes per block: the block header is one broadcast 16-byte load).

// Scale and min of sub-block j (0..7) from the header words y, z, w (scale bytes 0-3, 4-7, 8-11).
__device__ __forceinline__ void q4k_sm(const uint4 hd, int j, int& s, int& m) {
    const int k = j & 3;
    if (j < 4) {
        s = byte_of(hd.y, k) & 63;
        m = byte_of(hd.z, k) & 63;
    } else {
        s = (byte_of(hd.w, k) & 15) | ((byte_of(hd.y, k) >> 6) << 4);
        m = (byte_of(hd.w, k) >> 4) | ((byte_of(hd.z, k) >> 6) << 4);
    }
}

template <int NT>
__device__ __forceinline__ void q4k_seg(const uint4 hd, const uint4 q, int sg, const Act& a, int K, int nb, int t0,
                                        int n_tok, float* acc) {
    const int b = sg >> 3, j = sg & 7, p = j >> 1, h = j & 1;
    int s0, m0, s1, m1;
    q4k_sm(hd, 2 * p, s0, m0);
    q4k_sm(hd, 2 * p + 1, s1, m1);
    const float d = h2f((u16)(hd.x & 0xFFFFu)), dmin = h2f((u16)(hd.x >> 16));
    const int wl[4] = {(int)(q.x & 0x0F0F0F0Fu), (int)(q.y & 0x0F0F0F0Fu), (int)(q.z & 0x0F0F0F0Fu),
                       (int)(q.w & 0x0F0F0F0Fu)};
    const int wh[4] = {(int)((q.x >> 4) & 0x0F0F0F0Fu), (int)((q.y >> 4) & 0x0F0F0F0Fu),
                       (int)((q.z >> 4) & 0x0F0F0F0Fu), (int)((q.w >> 4) & 0x0F0F0F0Fu)};
    const int e0 = b * 256 + 64 * p + 16 * h;  // first element of the low-nibble run
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t0 + t < n_tok) {
            const u64 tt = (u64)(t0 + t);
            const i8* xt = a.c + tt * K;
            const int d0 = dot16(wl, *(const int4*)(xt + e0));
            const int d1 = dot16(wh, *(const int4*)(xt + e0 + 32));
            const short* bs = (const short*)a.s + tt * (K >> 4) + (e0 >> 4);
            const int b0 = bs[0], b1 = bs[2];
            const float da = ((const float*)a.d)[tt * nb + b];
            const float f = __fsub_rn(__fmul_rn(d, (float)(s0 * d0 + s1 * d1)), __fmul_rn(dmin, (float)(m0 * b0 + m1 * b1)));
            acc[t] = __fmaf_rn(da, f, acc[t]);
        }
    }
}

// U segments per lane are loaded before any is used (all of a 4096-column row's at U = 4), so a
// warp waits for memory once per U segments. The order of each token's sums is the lane's
// segments in increasing order whatever U is, so every (NT, U) gives the same bits.
template <int NT, int U>
__device__ __forceinline__ void mv_q4_k(const u8* W, u64 row_bytes, int rows, int nb, const Act a, float* out,
                                        int n_tok) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;  // uniform per warp
    const u8* wr = W + (u64)row * row_bytes;
    const int K = nb * 256, nseg = nb * 8;
    bool waited = false;  // PDL: the first weights are loaded before waiting on the predecessor
    for (int t0 = 0; t0 < n_tok; t0 += NT) {
        float acc[NT];
#pragma unroll
        for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
        for (int s0 = lane; s0 < nseg; s0 += 32 * U) {
            uint4 hd[U], q[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int sg = s0 + 32 * u;
                if (sg < nseg) {
                    const u8* bp = wr + (u64)(sg >> 3) * 144;
                    hd[u] = *(const uint4*)bp;
                    q[u] = *(const uint4*)(bp + 16 + 16 * (sg & 7));
                }
            }
            if (!waited) {
                PDL_START();
                waited = true;
            }
#pragma unroll
            for (int u = 0; u < U; ++u)
                if (s0 + 32 * u < nseg) q4k_seg<NT>(hd[u], q[u], s0 + 32 * u, a, K, nb, t0, n_tok, acc);
        }
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            const float v = warp_sum(acc[t]);
            if (lane == 0 && t0 + t < n_tok) out[(u64)(t0 + t) * rows + row] = v;
        }
    }
}

// Q6_K, repacked at upload (ops/matmul.rs `repack_q6_k`): a row of nb blocks is nb * 4 units of
// 48 bytes, then the nb * 16 int8 scales, then the nb f16 d, the row padded to 16 bytes. Unit
// u = 4b + 2h + g of block b holds ql[64h + 16g .. +16], ql[64h + 32 + 16g .. +16] and
// qh[32h + 16g .. +16] of the original block: elements 128h + 32s + 16g .. +16 for s = 0..3, whose
// scales are sc[8h + 2s + g].
template <int NT>
__device__ __forceinline__ void q6k_unit(const uint4 q0, const uint4 q1, const uint4 qh, const uint2 scv, float dw,
                                         int u, const Act& a, int K, int nb, int t0, int n_tok, float* acc) {
    const int b = u >> 2, h = (u >> 1) & 1, g = u & 1;
    const u32 w[4] = {q0.x, q0.y, q0.z, q0.w}, v[4] = {q1.x, q1.y, q1.z, q1.w}, hh[4] = {qh.x, qh.y, qh.z, qh.w};
    int c0[4], c1[4], c2[4], c3[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        c0[k] = sub_bytes((w[k] & 0x0F0F0F0Fu) | ((hh[k] & 0x03030303u) << 4), 32);
        c1[k] = sub_bytes((v[k] & 0x0F0F0F0Fu) | (((hh[k] >> 2) & 0x03030303u) << 4), 32);
        c2[k] = sub_bytes(((w[k] >> 4) & 0x0F0F0F0Fu) | (((hh[k] >> 4) & 0x03030303u) << 4), 32);
        c3[k] = sub_bytes(((v[k] >> 4) & 0x0F0F0F0Fu) | (((hh[k] >> 6) & 0x03030303u) << 4), 32);
    }
    const int sc0 = (int)(i8)byte_of(scv.x, g), sc1 = (int)(i8)byte_of(scv.x, g + 2);
    const int sc2 = (int)(i8)byte_of(scv.y, g), sc3 = (int)(i8)byte_of(scv.y, g + 2);
    const int e0 = b * 256 + 128 * h + 16 * g;
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t0 + t < n_tok) {
            const u64 tt = (u64)(t0 + t);
            const i8* xt = a.c + tt * K + e0;
            const int isum = sc0 * dot16(c0, *(const int4*)xt) + sc1 * dot16(c1, *(const int4*)(xt + 32)) +
                             sc2 * dot16(c2, *(const int4*)(xt + 64)) + sc3 * dot16(c3, *(const int4*)(xt + 96));
            const float da = ((const float*)a.d)[tt * nb + b];
            acc[t] = __fmaf_rn(__fmul_rn(dw, da), (float)isum, acc[t]);
        }
    }
}

template <int NT, int U>
__device__ __forceinline__ void mv_q6_kr(const u8* W, u64 row_bytes, int rows, int nb, const Act a, float* out,
                                         int n_tok) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;  // uniform per warp
    const u8* wr = W + (u64)row * row_bytes;
    const u8* scr = wr + (u64)nb * 192;
    const u16* dr = (const u16*)(wr + (u64)nb * 208);
    const int K = nb * 256, nu = nb * 4;
    bool waited = false;  // PDL: the first weights are loaded before waiting on the predecessor
    for (int t0 = 0; t0 < n_tok; t0 += NT) {
        float acc[NT];
#pragma unroll
        for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
        for (int u0 = lane; u0 < nu; u0 += 32 * U) {
            uint4 q0[U], q1[U], qh[U];
            uint2 sc[U];
            float dw[U];
#pragma unroll
            for (int i = 0; i < U; ++i) {
                const int u = u0 + 32 * i;
                if (u < nu) {
                    const uint4* p = (const uint4*)(wr + (u64)u * 48);
                    q0[i] = p[0];
                    q1[i] = p[1];
                    qh[i] = p[2];
                    sc[i] = *(const uint2*)(scr + 16 * (u >> 2) + 8 * ((u >> 1) & 1));
                    dw[i] = h2f(dr[u >> 2]);
                }
            }
            if (!waited) {
                PDL_START();
                waited = true;
            }
#pragma unroll
            for (int i = 0; i < U; ++i)
                if (u0 + 32 * i < nu)
                    q6k_unit<NT>(q0[i], q1[i], qh[i], sc[i], dw[i], u0 + 32 * i, a, K, nb, t0, n_tok, acc);
        }
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            const float v = warp_sum(acc[t]);
            if (lane == 0 && t0 + t < n_tok) out[(u64)(t0 + t) * rows + row] = v;
        }
    }
}

// Q8_0, repacked at upload (ops/matmul.rs `repack_q8_0`): a row of nb blocks is the nb * 32
// codes, then the nb f16 d, the row padded to 16 bytes. A unit is 16 codes (half a block).
template <int NT>
__device__ __forceinline__ void q80_unit(const int4 qv, float dw, int u, const Act& a, int K, int nb, int t0,
                                         int n_tok, float* acc) {
    const int w[4] = {qv.x, qv.y, qv.z, qv.w};
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t0 + t < n_tok) {
            const u64 tt = (u64)(t0 + t);
            const int i = dot16(w, *(const int4*)(a.c + tt * K + 16 * u));
            const float da = h2f(((const u16*)a.d)[tt * nb + (u >> 1)]);
            acc[t] = __fmaf_rn(__fmul_rn(dw, da), (float)i, acc[t]);
        }
    }
}

template <int NT, int U>
__device__ __forceinline__ void mv_q8_0r(const u8* W, u64 row_bytes, int rows, int nb, const Act a, float* out,
                                         int n_tok) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;  // uniform per warp
    const u8* wr = W + (u64)row * row_bytes;
    const u16* dr = (const u16*)(wr + (u64)nb * 32);
    const int K = nb * 32, nu = nb * 2;
    bool waited = false;  // PDL: the first weights are loaded before waiting on the predecessor
    for (int t0 = 0; t0 < n_tok; t0 += NT) {
        float acc[NT];
#pragma unroll
        for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
        for (int u0 = lane; u0 < nu; u0 += 32 * U) {
            int4 q[U];
            float dw[U];
#pragma unroll
            for (int i = 0; i < U; ++i) {
                const int u = u0 + 32 * i;
                if (u < nu) {
                    q[i] = *(const int4*)(wr + (u64)u * 16);
                    dw[i] = h2f(dr[u >> 1]);
                }
            }
            if (!waited) {
                PDL_START();
                waited = true;
            }
#pragma unroll
            for (int i = 0; i < U; ++i)
                if (u0 + 32 * i < nu) q80_unit<NT>(q[i], dw[i], u0 + 32 * i, a, K, nb, t0, n_tok, acc);
        }
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            const float v = warp_sum(acc[t]);
            if (lane == 0 && t0 + t < n_tok) out[(u64)(t0 + t) * rows + row] = v;
        }
    }
}

// U (units in flight per lane) is 2, or 4 for the `x4` variants of 1-2 tokens (ops/matmul.rs
// picks by row length: more in flight, but more registers and fewer resident warps).
#define MV16(name, fn, NT, U)                                                                             \
    extern "C" __global__ void __launch_bounds__(MV_WARPS * 32)                                         \
        name(const u8* W, u64 row_bytes, int rows, int nb, const i8* xc, const void* xd, const void* xs, \
             float* out, int n_tok) {                                                                     \
        fn<NT, U>(W, row_bytes, rows, nb, Act{xc, xd, xs}, out, n_tok);                                   \
    }

MV16(mv_q4_k_1, mv_q4_k, 1, 2)
MV16(mv_q4_k_2, mv_q4_k, 2, 2)
MV16(mv_q4_k_4, mv_q4_k, 4, 2)
MV16(mv_q4_k_8, mv_q4_k, 8, 2)
MV16(mv_q4_k_1x4, mv_q4_k, 1, 4)
MV16(mv_q4_k_2x4, mv_q4_k, 2, 4)
MV16(mv_q6_kr_1, mv_q6_kr, 1, 2)
MV16(mv_q6_kr_2, mv_q6_kr, 2, 2)
MV16(mv_q6_kr_4, mv_q6_kr, 4, 2)
MV16(mv_q6_kr_8, mv_q6_kr, 8, 2)
MV16(mv_q6_kr_1x4, mv_q6_kr, 1, 4)
MV16(mv_q6_kr_2x4, mv_q6_kr, 2, 4)
MV16(mv_q8_0r_1, mv_q8_0r, 1, 2)
MV16(mv_q8_0r_2, mv_q8_0r, 2, 2)
MV16(mv_q8_0r_4, mv_q8_0r, 4, 2)
MV16(mv_q8_0r_8, mv_q8_0r, 8, 2)
MV16(mv_q8_0r_1x4, mv_q8_0r, 1, 4)
MV16(mv_q8_0r_2x4, mv_q8_0r, 2, 4)
