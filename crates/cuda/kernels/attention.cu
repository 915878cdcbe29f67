// Causal (optionally windowed) attention over the paged f16 KV cache, with GQA.
// One block of ATT_THREADS per (head, token): grid = (n_head, n_tokens).
//
// The math is the CPU backend's (cpu/src/ops/attention.rs, after llama.cpp's CPU flash
// attention): Q rounded to f16; each score is the f16 Q·K dot in f32 accumulated as 8 strided
// lanes (fma) summed in lane order, times `scale`; keys visited in order with an online softmax;
// the V accumulator kept in f16 (acc = f16(fma(v, w, acc)), rescaled in f16 on a new maximum).
// Scores of a tile of keys are computed in parallel (8 threads per key), then the tile is folded
// into the accumulator key by key, each thread owning head_dim / ATT_THREADS dims.

#define ATT_THREADS 128
#define ATT_TILE 64
#define ATT_MAXD 512

extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attention(const float* q, const u16* kc, const u16* vc, float* out, const u32* positions, const u32* seq_index,
          const u32* bt_off, const u32* bt_flat, int n_head, int n_kv_head, int hd, int kv_dim, int window,
          float scale) {
    __shared__ float qs[ATT_MAXD];
    __shared__ float sc[ATT_TILE];
    const int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x;
    const int kvh = h / (n_head / n_kv_head);
    const int pos = (int)positions[t];
    const int lo = window > 0 ? max(0, pos + 1 - window) : 0;
    const u32* table = bt_flat + bt_off[seq_index[t]];
    const float* qr = q + ((u64)t * n_head + h) * hd;
    for (int d = tid; d < hd; d += ATT_THREADS) qs[d] = round_f16(qr[d]);
    float acc[ATT_MAXD / ATT_THREADS];
#pragma unroll
    for (int k = 0; k < ATT_MAXD / ATT_THREADS; ++k) acc[k] = 0.0f;
    float m = -KS_INF, sum = 0.0f;
    const int g8 = tid >> 3, l8 = tid & 7, base = (tid & 31) & ~7;
    __syncthreads();
    for (int p0 = lo; p0 <= pos; p0 += ATT_TILE) {
        const int n = min(ATT_TILE, pos + 1 - p0);
        for (int kb = 0; kb < n; kb += ATT_THREADS / 8) {
            const int kk = kb + g8;
            float a = 0.0f;
            if (kk < n) {
                const int p = p0 + kk;
                const u64 slot = (u64)table[p >> 4] * 16 + (p & 15);
                const u16* kr = kc + slot * kv_dim + (u64)kvh * hd;
                for (int d = l8; d < hd; d += 8) a = fmaf(qs[d], h2f(kr[d]), a);
            }
            float tot = __shfl_sync(0xffffffffu, a, base);
#pragma unroll
            for (int j = 1; j < 8; ++j) tot = __fadd_rn(tot, __shfl_sync(0xffffffffu, a, base + j));
            if (kk < n && l8 == 0) sc[kk] = __fmul_rn(tot, scale);
        }
        __syncthreads();
        for (int kk = 0; kk < n; ++kk) {
            const float s = sc[kk];
            float ms = 1.0f, vs = 1.0f;
            if (s > m) {
                ms = exp_f(m - s);
                m = s;
#pragma unroll
                for (int k = 0; k < ATT_MAXD / ATT_THREADS; ++k) acc[k] = round_f16(__fmul_rn(acc[k], ms));
            } else {
                vs = exp_f(s - m);
            }
            const int p = p0 + kk;
            const u64 slot = (u64)table[p >> 4] * 16 + (p & 15);
            const u16* vr = vc + slot * kv_dim + (u64)kvh * hd;
#pragma unroll
            for (int k = 0; k < ATT_MAXD / ATT_THREADS; ++k) {
                const int d = tid + k * ATT_THREADS;
                if (d < hd) acc[k] = round_f16(fmaf(h2f(vr[d]), vs, acc[k]));
            }
            sum = __fadd_rn(__fmul_rn(sum, ms), vs);
        }
        __syncthreads();
    }
    const float inv = sum == 0.0f ? 0.0f : __frcp_rn(sum);
    float* o = out + ((u64)t * n_head + h) * hd;
#pragma unroll
    for (int k = 0; k < ATT_MAXD / ATT_THREADS; ++k) {
        const int d = tid + k * ATT_THREADS;
        if (d < hd) o[d] = __fmul_rn(acc[k], inv);
    }
}
