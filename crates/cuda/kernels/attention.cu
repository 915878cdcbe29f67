// Causal (optionally windowed) attention over the paged f16 KV cache, with GQA, split over the
// keys (flash-decoding). grid = (n_head, n_tokens, n_splits), ATT_THREADS threads per block;
// with `rows` (a step that also holds prefill runs, which attention_prefill.cu takes) grid.y
// walks that list of token indices instead of all tokens.
// Each token reads its position, and with it how many keys it attends to, from the step buffer,
// and split z of n_splits takes the z-th of n_splits equal runs of those keys: a split with
// nothing to do writes an empty partial and returns, so one launch (one captured graph) serves
// every context length up to the one the split count was chosen for.
//
// Within a split the math is the CPU backend's (cpu/src/ops/attention.rs, after llama.cpp's CPU
// flash attention): Q rounded to f16; each score the f16 Q·K dot in f32, times `scale`; keys
// visited in order with an online softmax; the V accumulator kept in f16 (acc = f16(fma(v, w,
// acc)), rescaled in f16 on a new maximum). With one split (up to ops/attention.rs SPLIT_KEYS
// keys, chosen on the host) the output is that of the CPU up to the summation order of the
// scores. Keys go by tiles: the tile's K and V rows are staged in shared memory with
// asynchronous 16-byte copies, all issued at once (a tile waits for memory once); then three
// parallel phases: the scores (hd/8 lanes per key), the per-key weights (a prefix max over the
// tile gives each key the running maximum the sequential loop would see: rescale =
// exp(m_before - s) on a new maximum, else weight exp(s - m_before)), and the V accumulation,
// sequential over the keys for each of a thread's dims (the f16 rounding chain). With several
// splits each writes its f16-valued accumulator, maximum and sum to `part`, and
// attention_combine merges them in f32.

#define ATT_THREADS 128
#define ATT_TILE 64
#define ATT_MAXD 512
#define ATT_MAX_SPLITS 64
// Halves of K (and of V) staged in shared memory per tile: a tile is min(ATT_TILE, this / hd)
// keys (64 up to hd 128, 32 at 256, 16 at 512).
#define ATT_STAGE 8192

// Asynchronous 16-byte copy global -> shared (sm_80+), and the wait for all of a thread's.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    u32 s;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(s) : "l"(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

template <int DPT>
__device__ __forceinline__ void attention_t(const float* q, const u16* kc, const u16* vc, float* out, float* part,
                                            const u32* positions, const u32* seq_index, const u32* bt_off,
                                            const u32* bt_flat, int n_head, int n_kv_head, int hd, int kv_dim,
                                            int window, float scale, int n_splits, const u32* rows) {
    __shared__ __align__(16) u16 ks[ATT_STAGE];
    __shared__ __align__(16) u16 vsh[ATT_STAGE];
    __shared__ float qs[ATT_MAXD];
    __shared__ float wv[ATT_TILE];  // scores, then each key's weight
    __shared__ float wm[ATT_TILE];  // each key's rescale of the accumulator (1: none)
    __shared__ u32 slot_sh[ATT_TILE];
    __shared__ float m_sh;
    PDL_START();
    const int h = blockIdx.x, split = blockIdx.z, tid = threadIdx.x;
    const int t = rows ? (int)rows[blockIdx.y] : (int)blockIdx.y;
    const int warp = tid >> 5, lane = tid & 31;
    const int kvh = h / (n_head / n_kv_head);
    const int pos = (int)positions[t];
    const int lo = window > 0 ? max(0, pos + 1 - window) : 0;
    const int n_keys = pos + 1 - lo;
    const int chunk = (n_keys + n_splits - 1) / n_splits;
    const int k0 = lo + split * chunk;
    const int k1 = min(pos + 1, k0 + chunk);
    const u32* table = bt_flat + bt_off[seq_index[t]];
    const float* qr = q + ((u64)t * n_head + h) * hd;
    for (int d = tid; d < hd; d += ATT_THREADS) qs[d] = round_f16(qr[d]);
    if (tid == 0) m_sh = -KS_INF;
    float acc[DPT];
#pragma unroll
    for (int j = 0; j < DPT; ++j) acc[j] = 0.0f;
    float sum = 0.0f;
    // Scores: L lanes per key (a power of two >= hd/8, at most 32), each taking 8-half chunks
    // cl, cl + L of the head (at most 2: hd <= 512).
    const int nch = hd >> 3;
    int L = 1;
    while (L < nch && L < 32) L <<= 1;
    const int kpw = 32 / L, sub = lane / L, cl = lane % L;
    const int kt = min(ATT_TILE, ATT_STAGE / hd);
    __syncthreads();
    float qreg[2][8];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int c = cl + r * L;
#pragma unroll
        for (int i = 0; i < 8; ++i) qreg[r][i] = c < nch ? qs[8 * c + i] : 0.0f;
    }
    const u64 head_off = (u64)kvh * hd;
    for (int p0 = k0; p0 < k1; p0 += kt) {
        const int n = min(kt, k1 - p0);
        if (tid < n) {
            const int p = p0 + tid;
            slot_sh[tid] = table[p >> 4] * 16 + (p & 15);
        }
        __syncthreads();
        // Stage the tile's K and V rows (16-byte asynchronous copies, all in flight at once).
        for (int c = tid; c < n * nch; c += ATT_THREADS) {
            const int kk = c / nch, j = c - kk * nch;
            const u64 src = (u64)slot_sh[kk] * kv_dim + head_off + 8 * j;
            cp_async16(ks + kk * hd + 8 * j, kc + src);
            cp_async16(vsh + kk * hd + 8 * j, vc + src);
        }
        cp_async_wait_all();
        __syncthreads();
        for (int kb = warp * kpw; kb < n; kb += (ATT_THREADS / 32) * kpw) {  // uniform per warp
            const int kk = kb + sub;
            float a = 0.0f;
            if (kk < n) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int c = cl + r * L;
                    if (c < nch) {
                        const uint4 k8 = *(const uint4*)(ks + kk * hd + 8 * c);
                        const u32 kw[4] = {k8.x, k8.y, k8.z, k8.w};
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            a = fmaf(qreg[r][2 * i], h2f((u16)(kw[i] & 0xFFFFu)), a);
                            a = fmaf(qreg[r][2 * i + 1], h2f((u16)(kw[i] >> 16)), a);
                        }
                    }
                }
            }
            for (int o = L >> 1; o > 0; o >>= 1) a = __fadd_rn(a, __shfl_xor_sync(0xffffffffu, a, o));
            if (kk < n && cl == 0) wv[kk] = __fmul_rn(a, scale);
        }
        __syncthreads();
        if (warp == 0) {
            const float m_prev = m_sh;
            const int i0 = 2 * lane, i1 = 2 * lane + 1;
            const float s0 = i0 < n ? wv[i0] : -KS_INF;
            const float s1 = i1 < n ? wv[i1] : -KS_INF;
            float x = fmaxf(s0, s1);
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const float y = __shfl_up_sync(0xffffffffu, x, o);
                if (lane >= o) x = fmaxf(x, y);
            }
            float ex = __shfl_up_sync(0xffffffffu, x, 1);
            if (lane == 0) ex = -KS_INF;
            const float mb0 = fmaxf(m_prev, ex);  // the running maximum before key i0
            const float mb1 = fmaxf(mb0, s0);     // before key i1
            if (i0 < n) {
                const bool up = s0 > mb0;
                wm[i0] = up ? exp_f(mb0 - s0) : 1.0f;
                wv[i0] = up ? 1.0f : exp_f(s0 - mb0);
            }
            if (i1 < n) {
                const bool up = s1 > mb1;
                wm[i1] = up ? exp_f(mb1 - s1) : 1.0f;
                wv[i1] = up ? 1.0f : exp_f(s1 - mb1);
            }
            if (lane == 31) m_sh = fmaxf(m_prev, x);
        }
        __syncthreads();
        for (int kk = 0; kk < n; ++kk) {
            const float ms = wm[kk], vs = wv[kk];
            if (ms != 1.0f) {
#pragma unroll
                for (int j = 0; j < DPT; ++j) acc[j] = round_f16(__fmul_rn(acc[j], ms));
            }
#pragma unroll
            for (int j = 0; j < DPT; ++j) {
                const int d = tid + j * ATT_THREADS;
                const float v = d < hd ? h2f(vsh[kk * hd + d]) : 0.0f;
                acc[j] = round_f16(fmaf(v, vs, acc[j]));
            }
            sum = __fadd_rn(__fmul_rn(sum, ms), vs);
        }
        __syncthreads();
    }
    if (n_splits == 1) {
        const float inv = sum == 0.0f ? 0.0f : __frcp_rn(sum);
        float* o = out + ((u64)t * n_head + h) * hd;
#pragma unroll
        for (int j = 0; j < DPT; ++j) {
            const int d = tid + j * ATT_THREADS;
            if (d < hd) o[d] = __fmul_rn(acc[j], inv);
        }
    } else {
        float* pp = part + (((u64)t * n_head + h) * n_splits + split) * (hd + 2);
#pragma unroll
        for (int j = 0; j < DPT; ++j) {
            const int d = tid + j * ATT_THREADS;
            if (d < hd) pp[d] = acc[j];
        }
        if (tid == 0) {
            pp[hd] = m_sh;
            pp[hd + 1] = sum;
        }
    }
}

#define ATTENTION(name, DPT)                                                                                     \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                                   \
        name(const float* q, const u16* kc, const u16* vc, float* out, float* part, const u32* positions,        \
             const u32* seq_index, const u32* bt_off, const u32* bt_flat, int n_head, int n_kv_head, int hd,     \
             int kv_dim, int window, float scale, int n_splits, const u32* rows) {                               \
        attention_t<DPT>(q, kc, vc, out, part, positions, seq_index, bt_off, bt_flat, n_head, n_kv_head, hd,    \
                         kv_dim, window, scale, n_splits, rows);                                                 \
    }

ATTENTION(attention_d1, 1)
ATTENTION(attention_d2, 2)
ATTENTION(attention_d4, 4)

// Merge the splits of each (head, token): out = sum_i acc_i e^(m_i - M) / sum_i sum_i e^(m_i - M).
// grid = (n_head, n_tokens), ATT_THREADS threads.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attention_combine(const float* part, float* out, int n_head, int hd, int n_splits, const u32* rows) {
    __shared__ float ws[ATT_MAX_SPLITS];
    __shared__ float inv_sh;
    PDL_START();
    const int h = blockIdx.x, tid = threadIdx.x;
    const int t = rows ? (int)rows[blockIdx.y] : (int)blockIdx.y;
    const float* pp = part + ((u64)t * n_head + h) * n_splits * (hd + 2);
    float M = -KS_INF;
    for (int i = 0; i < n_splits; ++i) M = fmaxf(M, pp[i * (hd + 2) + hd]);
    for (int i = tid; i < n_splits; i += ATT_THREADS) {
        const float mi = pp[i * (hd + 2) + hd];
        ws[i] = mi == -KS_INF ? 0.0f : exp_f(mi - M);
    }
    __syncthreads();
    if (tid == 0) {
        float s = 0.0f;
        for (int i = 0; i < n_splits; ++i) s = fmaf(pp[i * (hd + 2) + hd + 1], ws[i], s);
        inv_sh = s == 0.0f ? 0.0f : __frcp_rn(s);
    }
    __syncthreads();
    float* o = out + ((u64)t * n_head + h) * hd;
    for (int d = tid; d < hd; d += ATT_THREADS) {
        float v = 0.0f;
        for (int i = 0; i < n_splits; ++i) v = fmaf(pp[i * (hd + 2) + d], ws[i], v);
        o[d] = __fmul_rn(v, inv_sh);
    }
}
