// Causal (optionally windowed) attention over the paged f16 KV cache, with GQA, for the tokens
// that do not take the tensor-core prefill kernel (attention_prefill.cu). Two kernels, chosen per
// token by its own number of keys (so a token's bits do not depend on what shares the step):
//
// attention_d*: up to `max_keys` keys (ops/attention.rs EXACT_KEYS), the CPU backend's exact
// chain (cpu/src/ops/attention.rs, after llama.cpp's CPU flash attention): Q rounded to f16; each
// score the f16 Q·K dot in f32, times `scale`; keys visited in order with an online softmax; the
// V accumulator kept in f16 (acc = f16(fma(v, w, acc)), rescaled in f16 on a new maximum). The
// output is that of the CPU up to the summation order of the scores. grid = (n_head, n_tokens),
// ATT_THREADS threads; a token with more keys returns at once. Keys go by tiles: the tile's K and
// V rows are staged in shared memory with asynchronous 16-byte copies, all issued at once; then
// three parallel phases: the scores (hd/8 lanes per key), the per-key weights (a prefix max over
// the tile gives each key the running maximum the sequential loop would see: rescale =
// exp(m_before - s) on a new maximum, else weight exp(s - m_before)), and the V accumulation,
// sequential over the keys for each of a thread's dims (the f16 rounding chain).
//
// attn_fdt_* (head dims 64, 128, 256) and attn_fd_* (the others): longer contexts,
// flash-decoding on tensor cores and in f32 FMAs (below).

#define ATT_THREADS 128
#define ATT_TILE 64
#define ATT_MAXD 512
#define ATT_MAX_SPLITS 128
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
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

template <int DPT>
__device__ __forceinline__ void attention_t(const float* q, const u16* kc, const u16* vc, float* out,
                                            const u32* positions, const u32* seq_index, const u32* bt_off,
                                            const u32* bt_flat, int n_head, int n_kv_head, int hd, int kv_dim,
                                            int window, float scale, int max_keys, const u32* rows) {
    __shared__ __align__(16) u16 ks[ATT_STAGE];
    __shared__ __align__(16) u16 vsh[ATT_STAGE];
    __shared__ float qs[ATT_MAXD];
    __shared__ float wv[ATT_TILE];  // scores, then each key's weight
    __shared__ float wm[ATT_TILE];  // each key's rescale of the accumulator (1: none)
    __shared__ u32 slot_sh[ATT_TILE];
    __shared__ float m_sh;
    PDL_START();
    const int h = blockIdx.x, tid = threadIdx.x;
    const int t = rows ? (int)rows[blockIdx.y] : (int)blockIdx.y;
    const int warp = tid >> 5, lane = tid & 31;
    const int kvh = h / (n_head / n_kv_head);
    const int pos = (int)positions[t];
    const int lo = window > 0 ? max(0, pos + 1 - window) : 0;
    if (pos + 1 - lo > max_keys) return;  // attn_fd_*'s token
    const int k0 = lo, k1 = pos + 1;
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
    const float inv = sum == 0.0f ? 0.0f : __frcp_rn(sum);
    float* o = out + ((u64)t * n_head + h) * hd;
#pragma unroll
    for (int j = 0; j < DPT; ++j) {
        const int d = tid + j * ATT_THREADS;
        if (d < hd) o[d] = __fmul_rn(acc[j], inv);
    }
}

#define ATTENTION(name, DPT)                                                                                     \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                                   \
        name(const float* q, const u16* kc, const u16* vc, float* out, const u32* positions,                     \
             const u32* seq_index, const u32* bt_off, const u32* bt_flat, int n_head, int n_kv_head, int hd,     \
             int kv_dim, int window, float scale, int max_keys, const u32* rows) {                               \
        attention_t<DPT>(q, kc, vc, out, positions, seq_index, bt_off, bt_flat, n_head, n_kv_head, hd, kv_dim,  \
                         window, scale, max_keys, rows);                                                         \
    }

ATTENTION(attention_d1, 1)
ATTENTION(attention_d2, 2)
ATTENTION(attention_d4, 4)

// ---- Flash decoding: tokens with more than `exact_keys` keys ----
// grid = (n_head / gb, n_tokens (or the row list), zmax), ATT_THREADS threads. A block takes `gb`
// query heads of one KV head (all of its GQA group up to FD_MAXG), so each K/V row is read once
// for them, and one split of the token's keys. The token's split count depends on its own number
// of keys alone (fd_splits: whole rounds of `unit` keys, at most `max_splits` splits) and
// split z takes the z-th run of them, so a token's bits do not depend on the step; grid.z
// is sized for the step's longest context and blocks beyond a token's splits return at once (one
// captured graph serves every context up to that). Per tile of keys: K and V rows staged with
// 16-byte asynchronous copies; scores for all (key, head) pairs at once (a thread per key and a
// few heads, Q in f32 in shared memory, read by all lanes at once); an f32 online softmax per head (one warp per head,
// the tile's maximum and sum by fixed shuffle trees); the f32 accumulator of gb × hd outputs,
// pairs of dims per thread (NP pairs), rescaled once per tile. Each split writes its unnormalized
// accumulator, maximum and sum to `part`; attention_combine merges them in split order.
#define FD_MAXG 8
// f32 Q of the block's heads (ops/attention.rs fd_heads keeps gb × hd within it).
#define FD_QS 2048
// Heads a thread scores per key: gb / (ATT_THREADS / kt) at most (kt = 64 keys: 8 / 2).
#define FD_HPT 4

// A token's splits (ops/attention.rs `token_splits`): its keys in rounds of `unit`, at most
// `max_splits` splits of whole rounds each (so no split ends in a sliver of a tile), every split
// non-empty; `chunk` = keys per split (the last takes the rest).
__device__ __forceinline__ int fd_splits(int n_keys, int unit, int max_splits, int* chunk) {
    const int rounds = (n_keys + unit - 1) / unit;
    const int rps = (rounds + min(max_splits, rounds) - 1) / min(max_splits, rounds);
    *chunk = rps * unit;
    return (rounds + rps - 1) / rps;
}

// The keys of this block's split of its token (blockIdx.y, or the row list's entry):
// [k0, k1) of token t. False when the block has nothing to do: the token
// takes attention_d* (at most `exact_keys` keys) or has fewer splits than blockIdx.z + 1.
struct FdKeys {
    int t, k0, k1;
};
__device__ __forceinline__ bool fd_keys(const u32* positions, int window, int exact_keys, int unit, int max_splits,
                                        const u32* rows, FdKeys* r) {
    const int t = rows ? (int)rows[blockIdx.y] : (int)blockIdx.y;
    const int pos = (int)positions[t];
    const int lo = window > 0 ? max(0, pos + 1 - window) : 0;
    const int n_keys = pos + 1 - lo;
    if (n_keys <= exact_keys) return false;
    int chunk;
    const int ns = fd_splits(n_keys, unit, max_splits, &chunk);
    if ((int)blockIdx.z >= ns) return false;
    r->t = t;
    r->k0 = lo + blockIdx.z * chunk;
    r->k1 = min(pos + 1, r->k0 + chunk);
    return true;
}

template <int NP>
__device__ __forceinline__ void attn_fd_t(const float* q, const u16* kc, const u16* vc, float* part,
                                          const u32* positions, const u32* seq_index, const u32* bt_off,
                                          const u32* bt_flat, int n_head, int n_kv_head, int gb, int hd, int kv_dim,
                                          int window, float scale, int exact_keys, int unit, int max_splits,
                                          int zmax, const u32* rows) {
    __shared__ __align__(16) u16 ks[ATT_STAGE];
    __shared__ __align__(16) u16 vsh[ATT_STAGE];
    __shared__ __align__(16) float qs[FD_QS];
    __shared__ float ps[FD_MAXG][ATT_TILE];  // scores, then weights
    __shared__ float m_sh[FD_MAXG], l_sh[FD_MAXG], al_sh[FD_MAXG];
    PDL_START();
    const int split = blockIdx.z, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int h0 = blockIdx.x * gb;
    const int kvh = h0 / (n_head / n_kv_head);
    FdKeys r;
    if (!fd_keys(positions, window, exact_keys, unit, max_splits, rows, &r)) return;
    const int t = r.t, k0 = r.k0, k1 = r.k1;
    const u32* table = bt_flat + bt_off[seq_index[t]];
    // Q rounded to f16, as the exact kernel and the CPU do, kept in f32.
    for (int e = tid; e < gb * hd; e += ATT_THREADS) qs[e] = round_f16(q[((u64)t * n_head + h0) * hd + e]);
    if (tid < FD_MAXG) {
        m_sh[tid] = -KS_INF;
        l_sh[tid] = 0.0f;
    }
    float acc[NP][2];
#pragma unroll
    for (int j = 0; j < NP; ++j) acc[j][0] = acc[j][1] = 0.0f;
    const int nch = hd >> 3;
    const int kt = min(ATT_TILE, ATT_STAGE / hd);
    // Scores: thread (kk = tid % kt, sub = tid / kt) takes key kk for heads sub, sub + S, ...
    // K rows are read down the keys (one row per lane), so their 16-byte chunks are stored
    // XOR-swizzled by the key (chunk c of key kk at c ^ (kk & 7)): 8 lanes reading chunk c of 8
    // consecutive keys hit 8 different bank groups. Needs hd a multiple of 64 (else unswizzled).
    const int S = ATT_THREADS / kt, skk = tid % kt, ssub = tid / kt;
    const int swz = (nch & 7) == 0 ? 7 : 0;
    const u64 head_off = (u64)kvh * hd;
    // Stage tile p0's K (swizzled) or V rows: 16-byte asynchronous copies, one commit group.
    auto stage = [&](u16* dst, const u16* src, int p0, int sw) {
        const int n = min(kt, k1 - p0);
        for (int c = tid; c < n * nch; c += ATT_THREADS) {
            const int kk = c / nch, j = c - kk * nch;
            const int p = p0 + kk;
            const u64 slot = (u64)table[p >> 4] * 16 + (p & 15);
            cp_async16(dst + kk * hd + 8 * (j ^ (kk & sw)), src + slot * kv_dim + head_off + 8 * j);
        }
        cp_async_commit();
    };
    // Software pipeline, one buffer each: the next tile's K loads while this tile's softmax and
    // V accumulation run, its V while the next scores and softmax run. Commit groups complete in
    // order: at a tile's start [K, V] are in flight.
    if (k0 < k1) {
        stage(ks, kc, k0, swz);
        stage(vsh, vc, k0, 0);
    }
    for (int p0 = k0; p0 < k1; p0 += kt) {
        const int n = min(kt, k1 - p0);
        const bool more = p0 + kt < k1;
        cp_async_wait_group<1>();  // this tile's K
        __syncthreads();
        if (skk < n && ssub < S) {
            float a[FD_HPT];
#pragma unroll
            for (int i = 0; i < FD_HPT; ++i) a[i] = 0.0f;
            const u16* kr = ks + skk * hd;
            const int sw = skk & swz;
            for (int c = 0; c < nch; ++c) {
                const uint4 k8 = *(const uint4*)(kr + 8 * (c ^ sw));
                const u32 kw[4] = {k8.x, k8.y, k8.z, k8.w};
                float kf[8];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    kf[2 * i] = h2f((u16)(kw[i] & 0xFFFFu));
                    kf[2 * i + 1] = h2f((u16)(kw[i] >> 16));
                }
#pragma unroll
                for (int i = 0; i < FD_HPT; ++i) {
                    const int g = ssub + S * i;
                    if (g < gb) {
                        const float4 q0 = *(const float4*)(qs + g * hd + 8 * c);
                        const float4 q1 = *(const float4*)(qs + g * hd + 8 * c + 4);
                        float x = a[i];
                        x = fmaf(q0.x, kf[0], x);
                        x = fmaf(q0.y, kf[1], x);
                        x = fmaf(q0.z, kf[2], x);
                        x = fmaf(q0.w, kf[3], x);
                        x = fmaf(q1.x, kf[4], x);
                        x = fmaf(q1.y, kf[5], x);
                        x = fmaf(q1.z, kf[6], x);
                        x = fmaf(q1.w, kf[7], x);
                        a[i] = x;
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < FD_HPT; ++i) {
                const int g = ssub + S * i;
                if (g < gb) ps[g][skk] = a[i] * scale;
            }
        }
        __syncthreads();
        if (more) stage(ks, kc, p0 + kt, swz);  // every thread is past its scores (the sync above)
        // Online softmax in f32, a warp per head (the tile has at most 64 keys: 2 per lane).
        for (int g = warp; g < gb; g += ATT_THREADS / 32) {
            const float s0 = lane < n ? ps[g][lane] : -KS_INF;
            const float s1 = lane + 32 < n ? ps[g][lane + 32] : -KS_INF;
            float mt = fmaxf(s0, s1);
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
            const float m_old = m_sh[g];
            const float m_new = fmaxf(m_old, mt);
            const float e0 = expf(s0 - m_new), e1 = expf(s1 - m_new);
            float sp = e0 + e1;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) sp += __shfl_xor_sync(0xffffffffu, sp, o);
            if (lane < n) ps[g][lane] = e0;
            if (lane + 32 < n) ps[g][lane + 32] = e1;
            __syncwarp();
            if (lane == 0) {
                const float al = expf(m_old - m_new);  // 0 on the first tile (m_old = -inf)
                al_sh[g] = al;
                l_sh[g] = fmaf(l_sh[g], al, sp);
                m_sh[g] = m_new;
            }
        }
        if (more) {
            cp_async_wait_group<1>();  // this tile's V (the next K may still load)
        } else {
            cp_async_wait_group<0>();
        }
        __syncthreads();
        // V: pairs of output dims e = 2 tid + 256 j of the gb × hd outputs.
#pragma unroll
        for (int j = 0; j < NP; ++j) {
            const int e = 2 * tid + 2 * ATT_THREADS * j;
            if (e < gb * hd) {
                const int g = e / hd, d = e - g * hd;
                const float al = al_sh[g];
                float a0 = acc[j][0] * al, a1 = acc[j][1] * al;
                const float* pg = ps[g];
                const u16* vp = vsh + d;
#pragma unroll 4
                for (int kk = 0; kk < n; ++kk) {
                    const u32 v2 = *(const u32*)(vp + kk * hd);
                    const float p = pg[kk];
                    a0 = fmaf(p, h2f((u16)(v2 & 0xFFFFu)), a0);
                    a1 = fmaf(p, h2f((u16)(v2 >> 16)), a1);
                }
                acc[j][0] = a0;
                acc[j][1] = a1;
            }
        }
        __syncthreads();
        if (more) stage(vsh, vc, p0 + kt, 0);
    }
    float* pp = part + ((u64)t * n_head + h0) * zmax * (hd + 2) + (u64)split * (hd + 2);
    const u64 hstride = (u64)zmax * (hd + 2);
#pragma unroll
    for (int j = 0; j < NP; ++j) {
        const int e = 2 * tid + 2 * ATT_THREADS * j;
        if (e < gb * hd) {
            const int g = e / hd, d = e - g * hd;
            pp[g * hstride + d] = acc[j][0];
            pp[g * hstride + d + 1] = acc[j][1];
        }
    }
    if (tid < gb) {
        pp[tid * hstride + hd] = m_sh[tid];
        pp[tid * hstride + hd + 1] = l_sh[tid];
    }
}

#define ATTN_FD(name, NP)                                                                                         \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                                   \
        name(const float* q, const u16* kc, const u16* vc, float* part, const u32* positions,                    \
             const u32* seq_index, const u32* bt_off, const u32* bt_flat, int n_head, int n_kv_head, int gb,     \
             int hd, int kv_dim, int window, float scale, int exact_keys, int unit, int max_splits,         \
             int zmax, const u32* rows) {                                                                        \
        attn_fd_t<NP>(q, kc, vc, part, positions, seq_index, bt_off, bt_flat, n_head, n_kv_head, gb, hd, kv_dim, \
                      window, scale, exact_keys, unit, max_splits, zmax, rows);                             \
    }

ATTN_FD(attn_fd_1, 1)
ATTN_FD(attn_fd_2, 2)
ATTN_FD(attn_fd_4, 4)
ATTN_FD(attn_fd_8, 8)

// Merge attn_fd_*'s splits of each (head, token) in split order, in f32: out = sum_i acc_i
// e^(m_i - M) / sum_i sum_i e^(m_i - M). grid = (n_head, n_tokens or the row list), ATT_THREADS
// threads; a token of the exact kernel returns at once.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attention_combine(const float* part, float* out, const u32* positions, int n_head, int hd, int window,
                  int exact_keys, int unit, int max_splits, int zmax, const u32* rows) {
    __shared__ float ws[ATT_MAX_SPLITS];
    __shared__ float inv_sh;
    PDL_START();
    const int h = blockIdx.x, tid = threadIdx.x;
    const int t = rows ? (int)rows[blockIdx.y] : (int)blockIdx.y;
    const int pos = (int)positions[t];
    const int n_keys = window > 0 ? min(pos + 1, window) : pos + 1;
    if (n_keys <= exact_keys) return;
    int chunk;
    const int ns = fd_splits(n_keys, unit, max_splits, &chunk);
    const float* pp = part + ((u64)t * n_head + h) * zmax * (hd + 2);
    float M = -KS_INF;
    for (int i = 0; i < ns; ++i) M = fmaxf(M, pp[i * (hd + 2) + hd]);
    for (int i = tid; i < ns; i += ATT_THREADS) {
        const float mi = pp[i * (hd + 2) + hd];
        ws[i] = mi == -KS_INF ? 0.0f : expf(mi - M);
    }
    __syncthreads();
    if (tid == 0) {
        float s = 0.0f;
        for (int i = 0; i < ns; ++i) s = fmaf(pp[i * (hd + 2) + hd + 1], ws[i], s);
        inv_sh = s == 0.0f ? 0.0f : 1.0f / s;
    }
    __syncthreads();
    float* o = out + ((u64)t * n_head + h) * hd;
    for (int d = tid; d < hd; d += ATT_THREADS) {
        float v = 0.0f;
        for (int i = 0; i < ns; ++i) v = fmaf(pp[i * (hd + 2) + d], ws[i], v);
        o[d] = v * inv_sh;
    }
}

// ---- Flash decoding on tensor cores: head dims 64, 128 and 256 ----
// Same grid, splits and partials as attn_fd_* (attention_combine merges both), but the block's
// 4 warps work independently: warp w takes keys [16 (w + 4 i), +16) of its split for i = 0, 1,
// ..., each streamed into the warp's own ST-stage ring of shared memory by 16-byte cp.async
// (ST - 1 stages in flight while one is used; no block barrier until the end), with its own
// online softmax; the 4 warps' results merge in warp order at the end. Per 16 keys:
// S = Q·Kᵀ by mma.sync m16n8k16 (A = Q, rows = the gb ≤ 8 heads, padded with zero rows; B = K
// rows by ldmatrix), the softmax in f32 on the accumulators (a head's 16 scores sit in 4 lanes),
// and Oᵀ += Vᵀ·Pᵀ (A = V by ldmatrix.trans, rows = dims; B = P straight from S's accumulators,
// whose layout is B's). P goes in as two f16 terms, p_hi = f16(p) and p_lo = f16(p − p_hi),
// so the weights keep ~22 bits, as f32 weights would to the test's bounds. Oᵀ's accumulators
// hold dims × heads, so none is spent on padding rows. Q is rounded to f16 as everywhere.
#define FDT_WARPS 4
#define FDT_KEYS 16
// Stages of a warp's ring (ops/attention.rs fdt_kernel sizes the shared memory). 3 measured no
// faster at batch 1 and slower at 16 (fewer blocks per SM).
#define FDT_STAGES 2

template <int HD, int ST>
__device__ __forceinline__ void attn_fdt(const float* q, const u16* kc, const u16* vc, float* part,
                                         const u32* positions, const u32* seq_index, const u32* bt_off,
                                         const u32* bt_flat, int n_head, int n_kv_head, int gb, int kv_dim,
                                         int window, float scale, int exact_keys, int unit, int max_splits,
                                         int zmax, const u32* rows) {
    constexpr int RS = HD + 8;                  // a K or V row in shared memory, padded (ldmatrix banks)
    constexpr int STAGE = 2 * FDT_KEYS * RS;  // one stage: 16 K rows, then 16 V rows
    constexpr int NK = HD / 16;                 // k-steps of Q·Kᵀ = m-tiles of Oᵀ
    constexpr int CH = HD / 8;                  // 16-byte chunks of a row
    extern __shared__ __align__(16) u16 fdt_smem[];
    __shared__ float mw[FDT_WARPS][8], lw[FDT_WARPS][8];
    PDL_START();
    const int split = blockIdx.z, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int h0 = blockIdx.x * gb;
    const int kvh = h0 / (n_head / n_kv_head);
    FdKeys r;
    if (!fd_keys(positions, window, exact_keys, unit, max_splits, rows, &r)) return;
    const int t = r.t, k0 = r.k0, k1 = r.k1;
    const u32* table = bt_flat + bt_off[seq_index[t]];
    u16* ring = fdt_smem + warp * ST * STAGE;
    const u64 head_off = (u64)kvh * HD;
    const int w0 = k0 + FDT_KEYS * warp;  // this warp's first key
    const int n_st = w0 < k1 ? (k1 - w0 + FDT_WARPS * FDT_KEYS - 1) / (FDT_WARPS * FDT_KEYS) : 0;
    // Stage i: K and V rows of keys w0 + 64 i ..; keys past the split's end copy its last key
    // (finite values; their weights are exactly 0).
    auto stage = [&](int i) {
        u16* ks = ring + (i % ST) * STAGE;
        const int p0 = w0 + FDT_WARPS * FDT_KEYS * i;
#pragma unroll
        for (int c = lane; c < FDT_KEYS * CH; c += 32) {
            const int kk = c / CH, j = c % CH;
            const int p = min(p0 + kk, k1 - 1);
            const u64 g = ((u64)table[p >> 4] * 16 + (p & 15)) * kv_dim + head_off + 8 * j;
            cp_async16(ks + kk * RS + 8 * j, kc + g);
            cp_async16(ks + (FDT_KEYS + kk) * RS + 8 * j, vc + g);
        }
    };
#pragma unroll
    for (int i = 0; i < ST - 1; ++i) {
        if (i < n_st) stage(i);
        cp_async_commit();
    }
    // Q as A fragments: head lane / 4 (zero past gb), dims 2 (lane % 4) + {0, 1} and + 8.
    const int gq = lane >> 2, tq = lane & 3;
    u32 qa[NK][2];
    {
        const float* qr = q + ((u64)t * n_head + h0 + min(gq, gb - 1)) * HD + 2 * tq;
#pragma unroll
        for (int kd = 0; kd < NK; ++kd) {
            const float2 x = *(const float2*)(qr + 16 * kd), y = *(const float2*)(qr + 16 * kd + 8);
            qa[kd][0] = gq < gb ? fa_pack(x.x, x.y) : 0u;
            qa[kd][1] = gq < gb ? fa_pack(y.x, y.y) : 0u;
        }
    }
    float acc[NK][4];
#pragma unroll
    for (int i = 0; i < NK; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    float m = -KS_INF, l = 0.0f;  // head gq's running maximum and sum
    for (int i = 0; i < n_st; ++i) {
        if (i + ST - 1 < n_st) stage(i + ST - 1);
        cp_async_commit();
        cp_async_wait_group<ST - 1>();  // stage i
        __syncwarp();
        const u16* lk = ring + (i % ST) * STAGE;
        float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
        for (int kd = 0; kd < NK; ++kd) {
            u32 b0, b1, b2, b3;
            fa_ldsm4(b0, b1, b2, b3, lk + ((lane & 7) + 8 * (lane >> 4)) * RS + 16 * kd + 8 * ((lane >> 3) & 1));
            fa_mma(s[0], qa[kd][0], 0u, qa[kd][1], 0u, b0, b1);
            fa_mma(s[1], qa[kd][0], 0u, qa[kd][1], 0u, b2, b3);
        }
        // Head gq's scores of keys p0 + 8 j + 2 tq + e in s[j][e] (e < 2).
        const int p0 = w0 + FDT_WARPS * FDT_KEYS * i;
        float x[4];
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e)
                x[2 * j + e] = p0 + 8 * j + 2 * tq + e < k1 ? s[j][e] * scale : -KS_INF;
        float mt = fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3]));
        mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
        mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
        const float mn = fmaxf(m, mt);
        const float al = expf(m - mn);  // 0 on the warp's first stage (m = -inf)
        float sum = 0.0f;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            x[e] = expf(x[e] - mn);
            sum += x[e];
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        l = fmaf(l, al, sum);
        m = mn;
        // Oᵀ's columns are heads 2 tq and 2 tq + 1: their rescales come from lanes 8 tq, 8 tq + 4.
        const float a0 = __shfl_sync(0xffffffffu, al, 8 * tq), a1 = __shfl_sync(0xffffffffu, al, 8 * tq + 4);
#pragma unroll
        for (int d = 0; d < NK; ++d) {
            acc[d][0] *= a0;
            acc[d][1] *= a1;
            acc[d][2] *= a0;
            acc[d][3] *= a1;
        }
        const u32 bh0 = fa_pack(x[0], x[1]), bh1 = fa_pack(x[2], x[3]);
        const u32 bl0 = fa_pack(x[0] - h2f((u16)(bh0 & 0xFFFFu)), x[1] - h2f((u16)(bh0 >> 16)));
        const u32 bl1 = fa_pack(x[2] - h2f((u16)(bh1 & 0xFFFFu)), x[3] - h2f((u16)(bh1 >> 16)));
        const u16* lv = lk + FDT_KEYS * RS;
#pragma unroll
        for (int d = 0; d < NK; ++d) {
            u32 a[4];
            fa_ldsm4t(a[0], a[1], a[2], a[3], lv + ((lane & 7) + 8 * (lane >> 4)) * RS + 16 * d + 8 * ((lane >> 3) & 1));
            fa_mma(acc[d], a[0], a[1], a[2], a[3], bh0, bh1);
            fa_mma(acc[d], a[0], a[1], a[2], a[3], bl0, bl1);
        }
        __syncwarp();  // every lane is done with this stage before it is refilled
    }
    // Merge the warps in order: each writes its Oᵀ (as O[head][dim], f32) over its own ring.
    cp_async_wait_group<0>();
    __syncwarp();
    float* ow = (float*)ring;
    const int c0 = 2 * tq, c1 = 2 * tq + 1;
#pragma unroll
    for (int d = 0; d < NK; ++d) {
        const int dd = 16 * d + gq;
        if (c0 < gb) {
            ow[c0 * HD + dd] = acc[d][0];
            ow[c0 * HD + dd + 8] = acc[d][2];
        }
        if (c1 < gb) {
            ow[c1 * HD + dd] = acc[d][1];
            ow[c1 * HD + dd + 8] = acc[d][3];
        }
    }
    if (tq == 0 && gq < gb) {
        mw[warp][gq] = m;
        lw[warp][gq] = l;
    }
    __syncthreads();
    float* pp = part + ((u64)t * n_head + h0) * zmax * (HD + 2) + (u64)split * (HD + 2);
    const u64 hstride = (u64)zmax * (HD + 2);
    for (int e = tid; e < gb * HD; e += FDT_WARPS * 32) {
        const int g = e / HD, d = e - g * HD;
        float M = -KS_INF;
#pragma unroll
        for (int w = 0; w < FDT_WARPS; ++w) M = fmaxf(M, mw[w][g]);
        float o = 0.0f, ls = 0.0f;
#pragma unroll
        for (int w = 0; w < FDT_WARPS; ++w) {
            const float wt = mw[w][g] == -KS_INF ? 0.0f : expf(mw[w][g] - M);
            o = fmaf(((const float*)(fdt_smem + w * ST * STAGE))[g * HD + d], wt, o);
            ls = fmaf(lw[w][g], wt, ls);
        }
        pp[g * hstride + d] = o;
        if (d == 0) {
            pp[g * hstride + HD] = M;
            pp[g * hstride + HD + 1] = ls;
        }
    }
}

#define ATTN_FDT(HD)                                                                                             \
    extern "C" __global__ void __launch_bounds__(FDT_WARPS * 32) attn_fdt_##HD(                                  \
        const float* q, const u16* kc, const u16* vc, float* part, const u32* positions, const u32* seq_index,   \
        const u32* bt_off, const u32* bt_flat, int n_head, int n_kv_head, int gb, int hd, int kv_dim, int window, \
        float scale, int exact_keys, int unit, int max_splits, int zmax, const u32* rows) {                      \
        attn_fdt<HD, FDT_STAGES>(q, kc, vc, part, positions, seq_index, bt_off, bt_flat, n_head, n_kv_head, gb, kv_dim,  \
                         window, scale, exact_keys, unit, max_splits, zmax, rows);                               \
    }

ATTN_FDT(64)
ATTN_FDT(128)
ATTN_FDT(256)
