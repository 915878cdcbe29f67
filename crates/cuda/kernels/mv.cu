// Weight-stationary 16-byte matvecs for the types Q4_K_M, Q6_K, Q8_0 and Q4_0 models are made
// of (ops/matmul.rs `fast_kernel`): out[t][r] = sum_k W[r][k] * x[t][k] for 1..16 tokens per pass.
//
// Shape of a launch (128 threads per block):
// - G threads share a row ("threads per row", a power of two, 4..128, chosen from the matrix's
//   shape alone): thread g of a row takes the row's units g, g + G, g + 2G, ... (a unit: 64
//   values of Q4_K / Q6_K, one 32-value block of Q8_0 / Q4_0) and sums each token's unit
//   products in that order; then the G partial sums are added by a butterfly of shuffles
//   (G <= 32) or per warp and then warp 0 + warp 1 + ... through shared memory (G > 32).
// - A group of G threads works on R rows at once (R = 1, 2, 4): the same unit of R rows is
//   loaded, decoded once, and dotted with each token's activations, which are loaded once per
//   unit for all R rows. U units per row are loaded before any is used (U = 2 for 1-2 tokens,
//   1 above), so a thread has R * U 16-byte weight loads (x 2-3) in flight.
// - NT tokens per pass (1, 2, 4, 8, 16): each weight unit is read once per NT tokens; more
//   tokens loop over passes.
// A token's result depends only on G (a function of the shape): the order of its unit sums and
// of the reduction are the same for every NT, R and U, and every rounding is spelled out
// (__fmul_rn, __fmaf_rn) so no instantiation contracts differently. So a token gets the same
// bits in any batch (what lets a padded, graph-replayed decode step match an eager one).
//
// PDL: weights do not depend on the predecessor, so each thread issues its first weight loads
// before PDL_START; activations and the output come after it.

#define MV_THREADS 128

// Activations in the A32 / A256 layout (ops/matmul.rs `ActLayout`): codes [n_tok][K]; A32: d, s
// f16 [n_tok][K/32]; A256: d f32 [n_tok][K/256], sums int16 [n_tok][K/16].
struct Act {
    const i8* c;
    const void* d;
    const void* s;
};

__device__ __forceinline__ int byte_of(u32 w, int k) { return (int)((w >> (8 * k)) & 0xFFu); }

// Sum of the four int8x4 products of 16 weight codes and 16 activation codes.
__device__ __forceinline__ int dot16(const int* w, const int4 a) {
    return dp4a(w[3], a.w, dp4a(w[2], a.z, dp4a(w[1], a.y, dp4a(w[0], a.x, 0))));
}

// ---- Q4_K (144-byte blocks, 16-byte aligned as uploaded: f16 d, f16 dmin, 12 bytes of 6-bit
// scales and mins, 128 bytes of nibbles). Unit u = 4b + p is the 64 values 64p .. 64p + 63 of
// block b: the 32 nibble bytes at 16 + 32p (low nibbles: sub-block 2p, high: 2p + 1) and the
// 16-byte header (loaded by the 4 threads of a block: one broadcast).
struct Q4K {
    enum { UPB = 4, VPB = 256 };
    struct Raw {
        uint4 hd, q0, q1;
    };
    struct Dec {
        int wl[8], wh[8];
        int s0, m0, s1, m1;
        float d, dmin;
    };
    struct X {
        int4 x0, x1, x2, x3;
        int b0, b1;
        float da;
    };
    static __device__ __forceinline__ void load(const u8* wr, int u, int nb, Raw& r) {
        const u8* bp = wr + (u64)(u >> 2) * 144;
        r.hd = *(const uint4*)bp;
        const uint4* q = (const uint4*)(bp + 16 + 32 * (u & 3));
        r.q0 = q[0];
        r.q1 = q[1];
    }
    // Scale and min of sub-block j (0..7) from the header words y, z, w (scale bytes 0-11).
    static __device__ __forceinline__ void sm(const uint4 hd, int j, int& s, int& m) {
        const int k = j & 3;
        if (j < 4) {
            s = byte_of(hd.y, k) & 63;
            m = byte_of(hd.z, k) & 63;
        } else {
            s = (byte_of(hd.w, k) & 15) | ((byte_of(hd.y, k) >> 6) << 4);
            m = (byte_of(hd.w, k) >> 4) | ((byte_of(hd.z, k) >> 6) << 4);
        }
    }
    static __device__ __forceinline__ void decode(const Raw& r, int u, Dec& w) {
        const int p = u & 3;
        sm(r.hd, 2 * p, w.s0, w.m0);
        sm(r.hd, 2 * p + 1, w.s1, w.m1);
        w.d = h2f((u16)(r.hd.x & 0xFFFFu));
        w.dmin = h2f((u16)(r.hd.x >> 16));
        const u32 q[8] = {r.q0.x, r.q0.y, r.q0.z, r.q0.w, r.q1.x, r.q1.y, r.q1.z, r.q1.w};
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            w.wl[k] = (int)(q[k] & 0x0F0F0F0Fu);
            w.wh[k] = (int)((q[k] >> 4) & 0x0F0F0F0Fu);
        }
    }
    static __device__ __forceinline__ void loadx(const Act& a, u64 t, int K, int nb, int u, X& x) {
        const int e0 = (u >> 2) * 256 + 64 * (u & 3);
        const int4* xp = (const int4*)(a.c + t * K + e0);
        x.x0 = xp[0];
        x.x1 = xp[1];
        x.x2 = xp[2];
        x.x3 = xp[3];
        const short4 bs = *(const short4*)((const short*)a.s + t * (K >> 4) + (e0 >> 4));
        x.b0 = (int)bs.x + (int)bs.y;
        x.b1 = (int)bs.z + (int)bs.w;
        x.da = ((const float*)a.d)[t * nb + (u >> 2)];
    }
    static __device__ __forceinline__ float dot(const Dec& w, const X& x, float acc) {
        const int dl = dot16(w.wl, x.x0) + dot16(w.wl + 4, x.x1);
        const int dh = dot16(w.wh, x.x2) + dot16(w.wh + 4, x.x3);
        const float f = __fsub_rn(__fmul_rn(w.d, (float)(w.s0 * dl + w.s1 * dh)),
                                  __fmul_rn(w.dmin, (float)(w.m0 * x.b0 + w.m1 * x.b1)));
        return __fmaf_rn(x.da, f, acc);
    }
};

// ---- Q6_K, repacked at upload (ops/matmul.rs `repack_q6_k`): a row of nb blocks is nb * 4
// units of 48 bytes, then the nb * 16 int8 scales, then the nb f16 d, the row padded to 16
// bytes. Unit u = 4b + 2h + g of block b holds ql[64h + 16g .. +16], ql[64h + 32 + 16g .. +16]
// and qh[32h + 16g .. +16] of the original block: values 128h + 32s + 16g .. +16 for s = 0..3,
// whose scales are sc[8h + 2s + g].
struct Q6KR {
    enum { UPB = 4, VPB = 256 };
    struct Raw {
        uint4 q0, q1, qh;
        uint2 sc;
        u16 d;
    };
    struct Dec {
        int c0[4], c1[4], c2[4], c3[4];
        int s0, s1, s2, s3;
        float d;
    };
    struct X {
        int4 x0, x1, x2, x3;
        float da;
    };
    static __device__ __forceinline__ void load(const u8* wr, int u, int nb, Raw& r) {
        const uint4* p = (const uint4*)(wr + (u64)u * 48);
        r.q0 = p[0];
        r.q1 = p[1];
        r.qh = p[2];
        r.sc = *(const uint2*)(wr + (u64)nb * 192 + 16 * (u >> 2) + 8 * ((u >> 1) & 1));
        r.d = *(const u16*)(wr + (u64)nb * 208 + 2 * (u >> 2));
    }
    static __device__ __forceinline__ void decode(const Raw& r, int u, Dec& w) {
        const int g = u & 1;
        const u32 a[4] = {r.q0.x, r.q0.y, r.q0.z, r.q0.w}, b[4] = {r.q1.x, r.q1.y, r.q1.z, r.q1.w},
                  h[4] = {r.qh.x, r.qh.y, r.qh.z, r.qh.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            w.c0[k] = sub_bytes((a[k] & 0x0F0F0F0Fu) | ((h[k] & 0x03030303u) << 4), 32);
            w.c1[k] = sub_bytes((b[k] & 0x0F0F0F0Fu) | (((h[k] >> 2) & 0x03030303u) << 4), 32);
            w.c2[k] = sub_bytes(((a[k] >> 4) & 0x0F0F0F0Fu) | (((h[k] >> 4) & 0x03030303u) << 4), 32);
            w.c3[k] = sub_bytes(((b[k] >> 4) & 0x0F0F0F0Fu) | (((h[k] >> 6) & 0x03030303u) << 4), 32);
        }
        w.s0 = (int)(i8)byte_of(r.sc.x, g);
        w.s1 = (int)(i8)byte_of(r.sc.x, g + 2);
        w.s2 = (int)(i8)byte_of(r.sc.y, g);
        w.s3 = (int)(i8)byte_of(r.sc.y, g + 2);
        w.d = h2f(r.d);
    }
    static __device__ __forceinline__ void loadx(const Act& a, u64 t, int K, int nb, int u, X& x) {
        const int e0 = (u >> 2) * 256 + 128 * ((u >> 1) & 1) + 16 * (u & 1);
        const i8* xt = a.c + t * K + e0;
        x.x0 = *(const int4*)xt;
        x.x1 = *(const int4*)(xt + 32);
        x.x2 = *(const int4*)(xt + 64);
        x.x3 = *(const int4*)(xt + 96);
        x.da = ((const float*)a.d)[t * nb + (u >> 2)];
    }
    static __device__ __forceinline__ float dot(const Dec& w, const X& x, float acc) {
        const int isum = w.s0 * dot16(w.c0, x.x0) + w.s1 * dot16(w.c1, x.x1) + w.s2 * dot16(w.c2, x.x2) +
                         w.s3 * dot16(w.c3, x.x3);
        return __fmaf_rn(__fmul_rn(w.d, x.da), (float)isum, acc);
    }
};

// ---- Q8_0, repacked at upload (ops/matmul.rs `repack_q8_0`): a row of nb blocks is the nb * 32
// codes, then the nb f16 d, the row padded to 16 bytes. Unit u is block u.
struct Q80R {
    enum { UPB = 1, VPB = 32 };
    struct Raw {
        uint4 q0, q1;
        u16 d;
    };
    struct Dec {
        int w[8];
        float d;
    };
    struct X {
        int4 x0, x1;
        float da;
    };
    static __device__ __forceinline__ void load(const u8* wr, int u, int nb, Raw& r) {
        const uint4* p = (const uint4*)(wr + (u64)u * 32);
        r.q0 = p[0];
        r.q1 = p[1];
        r.d = *(const u16*)(wr + (u64)nb * 32 + 2 * u);
    }
    static __device__ __forceinline__ void decode(const Raw& r, int u, Dec& w) {
        const u32 q[8] = {r.q0.x, r.q0.y, r.q0.z, r.q0.w, r.q1.x, r.q1.y, r.q1.z, r.q1.w};
#pragma unroll
        for (int k = 0; k < 8; ++k) w.w[k] = (int)q[k];
        w.d = h2f(r.d);
    }
    static __device__ __forceinline__ void loadx(const Act& a, u64 t, int K, int nb, int u, X& x) {
        const int4* xp = (const int4*)(a.c + t * K + 32 * u);
        x.x0 = xp[0];
        x.x1 = xp[1];
        x.da = h2f(((const u16*)a.d)[t * nb + u]);
    }
    static __device__ __forceinline__ float dot(const Dec& w, const X& x, float acc) {
        const int i = dot16(w.w, x.x0) + dot16(w.w + 4, x.x1);
        return __fmaf_rn(__fmul_rn(w.d, x.da), (float)i, acc);
    }
};

// ---- Q4_0, repacked at upload (ops/matmul.rs `repack_q4_0`): a row of nb blocks is the nb * 16
// nibble bytes (low nibbles: values 0..15 of the block, high: 16..31), then the nb f16 d, the
// row padded to 16 bytes. Unit u is block u; codes are nibble - 8 (the CPU's Q4_0 x Q8_0).
struct Q40R {
    enum { UPB = 1, VPB = 32 };
    struct Raw {
        uint4 q;
        u16 d;
    };
    struct Dec {
        int w[8];
        float d;
    };
    typedef Q80R::X X;
    static __device__ __forceinline__ void load(const u8* wr, int u, int nb, Raw& r) {
        r.q = *(const uint4*)(wr + (u64)u * 16);
        r.d = *(const u16*)(wr + (u64)nb * 16 + 2 * u);
    }
    static __device__ __forceinline__ void decode(const Raw& r, int u, Dec& w) {
        const u32 q[4] = {r.q.x, r.q.y, r.q.z, r.q.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            w.w[k] = sub_bytes(q[k] & 0x0F0F0F0Fu, 8);
            w.w[k + 4] = sub_bytes((q[k] >> 4) & 0x0F0F0F0Fu, 8);
        }
        w.d = h2f(r.d);
    }
    static __device__ __forceinline__ void loadx(const Act& a, u64 t, int K, int nb, int u, X& x) {
        Q80R::loadx(a, t, K, nb, u, x);
    }
    static __device__ __forceinline__ float dot(const Dec& w, const X& x, float acc) {
        const int i = dot16(w.w, x.x0) + dot16(w.w + 4, x.x1);
        return __fmaf_rn(__fmul_rn(w.d, x.da), (float)i, acc);
    }
};

template <class T, int NT, int R, int U>
__device__ __forceinline__ void mv(const u8* W, u64 row_bytes, int rows, int nb, const Act a, float* out, int n_tok,
                                   int G, int blk) {
    __shared__ float red[MV_THREADS / 32][R * NT];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = tid & (G - 1);
    const int row0 = (blk * (MV_THREADS / G) + tid / G) * R;
    const int nu = nb * T::UPB, K = nb * T::VPB;
    const u8* wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wr[r] = W + (u64)min(row0 + r, rows - 1) * row_bytes;
    bool waited = false;
    for (int t0 = 0; t0 < n_tok; t0 += NT) {
        float acc[R][NT];
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int t = 0; t < NT; ++t) acc[r][t] = 0.0f;
        for (int u0 = g; u0 < nu; u0 += G * U) {
            typename T::Raw raw[U][R];
#pragma unroll
            for (int i = 0; i < U; ++i)
                if (u0 + G * i < nu)
#pragma unroll
                    for (int r = 0; r < R; ++r) T::load(wr[r], u0 + G * i, nb, raw[i][r]);
            if (!waited) {
                PDL_START();
                waited = true;
            }
#pragma unroll
            for (int i = 0; i < U; ++i) {
                const int u = u0 + G * i;
                if (u < nu && NT == 1) {
                    // One token: decode each row's unit just before its dot (fewer live
                    // registers, more resident warps).
                    typename T::X x;
                    T::loadx(a, (u64)t0, K, nb, u, x);
#pragma unroll
                    for (int r = 0; r < R; ++r) {
                        typename T::Dec dec;
                        T::decode(raw[i][r], u, dec);
                        acc[r][0] = T::dot(dec, x, acc[r][0]);
                    }
                } else if (u < nu) {
                    typename T::Dec dec[R];
#pragma unroll
                    for (int r = 0; r < R; ++r) T::decode(raw[i][r], u, dec[r]);
#pragma unroll
                    for (int t = 0; t < NT; ++t) {
                        if (t0 + t < n_tok) {
                            typename T::X x;
                            T::loadx(a, (u64)(t0 + t), K, nb, u, x);
#pragma unroll
                            for (int r = 0; r < R; ++r) acc[r][t] = T::dot(dec[r], x, acc[r][t]);
                        }
                    }
                }
            }
        }
        if (!waited) {  // a thread with no units still writes the output: wait first
            PDL_START();
            waited = true;
        }
        // Butterfly over min(G, 32) lanes: every lane ends with the same bits (a + b == b + a).
        const int span = G < 32 ? G : 32;
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int t = 0; t < NT; ++t)
                for (int o = span >> 1; o > 0; o >>= 1) acc[r][t] += __shfl_xor_sync(0xffffffffu, acc[r][t], o);
        if (G <= 32) {
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int t = 0; t < NT; ++t)
                    if (((r * NT + t) & (G - 1)) == g && t0 + t < n_tok && row0 + r < rows)
                        out[(u64)(t0 + t) * rows + row0 + r] = acc[r][t];
        } else {
            if (lane == 0) {
#pragma unroll
                for (int r = 0; r < R; ++r)
#pragma unroll
                    for (int t = 0; t < NT; ++t) red[warp][r * NT + t] = acc[r][t];
            }
            __syncthreads();
            if (g < 32) {  // the row group's first warp adds its warps in order
                const int nw = G >> 5;
#pragma unroll
                for (int r = 0; r < R; ++r)
#pragma unroll
                    for (int t = 0; t < NT; ++t) {
                        if (((r * NT + t) & 31) == lane && t0 + t < n_tok && row0 + r < rows) {
                            float v = red[warp][r * NT + t];
                            for (int w = 1; w < nw; ++w) v += red[warp + w][r * NT + t];
                            out[(u64)(t0 + t) * rows + row0 + r] = v;
                        }
                    }
            }
            __syncthreads();
        }
    }
}

// One weight matrix of a launch: blocks end0 .. end - 1 of the grid (end0: the previous
// segment's end) compute out = x . W^T with G threads per row (its own shape's G, so that a
// fused launch gives every row the bits of a launch of its own).
#define MV_SEG(i) const u8 *W##i, u64 rb##i, int rows##i, float *out##i, int G##i, int end##i
#define MV_PICK(f) (s == 0 ? f##0 : s == 1 ? f##1 : f##2)

// Kernel `mv_<type>_<NT>_<R>`: up to 3 matrices that share the input (q/k/v, gate/up: ops/
// matmul.rs `matmuls`) in one launch; segments past `nseg` are never reached. U = 2 units per
// row in flight for 1-2 tokens, 1 above (the decoded units of R rows and R * NT sums must stay
// in registers).
// Blocks of 128 threads per SM the compiler must make room for (registers <= 65536 / (128 n)).
// Left free, the R = 2 kernels of 1-2 tokens take Q4_K 116 and Q6_K 137 registers: 4 and 3
// blocks per SM. Measured on the H200 (docs/benchmarks/cuda-matvec.md, "Occupancy of the 1-2
// token kernels"): Q6_K at 4 blocks (122 registers, no spill) is 13% faster on the 8B's down
// and LM head; Q4_K's 1-token kernel at 5 blocks (96 registers, 4 bytes of spill) is 6% faster
// on q/o (4096 rows: the whole grid resident at once) and 2-4% slower on down, k/v and the
// 0.6B's matrices; its 2-token kernel spills at 96 registers and loses 5-20%, so it keeps 4.
template <class T, int NT, int R>
struct MinBlocks {
    enum { n = R == 4 && NT >= 4 ? 3 : 1 };
};
template <>
struct MinBlocks<Q4K, 1, 2> {
    enum { n = 5 };
};
template <>
struct MinBlocks<Q6KR, 1, 2> {
    enum { n = 4 };
};
template <>
struct MinBlocks<Q6KR, 2, 2> {
    enum { n = 4 };
};

template <class T, int NT, int R>
__device__ __forceinline__ void mv_segs(const Act a, int nb, int n_tok, MV_SEG(0), MV_SEG(1), MV_SEG(2)) {
    const int bx = blockIdx.x;
    const int s = bx < end0 ? 0 : bx < end1 ? 1 : 2;
    const int first = s == 0 ? 0 : s == 1 ? end0 : end1;
    mv<T, NT, R, (NT <= 2 ? 2 : 1)>(MV_PICK(W), MV_PICK(rb), MV_PICK(rows), nb, a, MV_PICK(out), n_tok, MV_PICK(G),
                                    bx - first);
}
#define MVK(T, ty, NT, R)                                                                                 \
    extern "C" __global__ void __launch_bounds__(MV_THREADS, MinBlocks<T, NT, R>::n)                      \
        mv_##ty##_##NT##_##R(const i8* xc, const void* xd, const void* xs, int nb, int n_tok, MV_SEG(0), \
                             MV_SEG(1), MV_SEG(2)) {                                                      \
        mv_segs<T, NT, R>(Act{xc, xd, xs}, nb, n_tok, W0, rb0, rows0, out0, G0, end0, W1, rb1, rows1,    \
                          out1, G1, end1, W2, rb2, rows2, out2, G2, end2);                                \
    }
#define MV_ALL(T, ty)   \
    MVK(T, ty, 1, 1)    \
    MVK(T, ty, 1, 2)    \
    MVK(T, ty, 1, 4)    \
    MVK(T, ty, 2, 1)    \
    MVK(T, ty, 2, 2)    \
    MVK(T, ty, 2, 4)    \
    MVK(T, ty, 4, 1)    \
    MVK(T, ty, 4, 2)    \
    MVK(T, ty, 4, 4)    \
    MVK(T, ty, 8, 1)    \
    MVK(T, ty, 8, 2)    \
    MVK(T, ty, 8, 4)    \
    MVK(T, ty, 16, 1)   \
    MVK(T, ty, 16, 2)

MV_ALL(Q4K, q4_k)
MV_ALL(Q6KR, q6_kr)
MV_ALL(Q80R, q8_0r)
MV_ALL(Q40R, q4_0r)
