// Prefill attention on tensor cores (flash attention, FA2-style): causal, optionally windowed,
// GQA, over the paged f16 KV cache. For runs of many query tokens of one sequence; decode tokens
// keep attention.cu.
//
// Work: grid = (n_tiles, n_kv_head, HD / DC), NW warps per block. A query tile is
// BM = 16 × RG × NW rows = `tpt` consecutive tokens of one run × the `group` query heads that share KV head
// blockIdx.y (row r: token r / group, head kvh * group + r % group), so each K/V tile is loaded
// once for the whole group. The runs (first token, count; consecutive positions of one sequence)
// come from the step buffer (backend.rs `begin_step`); a block finds its tile by walking them,
// heaviest tiles (the last of a run: the most keys) first. Tiles never straddle runs.
//
// Per block: Q (rounded to f16, as the CPU does) staged in shared memory once; key tiles of BN
// keys from the run's first row's window start (rounded down to a multiple of BN) to its last
// row's position, K and V rows fetched
// through the block table with 16-byte asynchronous copies, double buffered (tile i + 1 in
// flight while tile i is computed). Key tiles the window excludes for every row are never
// visited; only tiles cut by the diagonal or a row's window edge pay for the mask. Each warp owns
// RG groups of 16 rows (each K or V fragment loaded from shared memory feeds RG row groups):
// S = Q·Kᵀ by mma.sync m16n8k16 (f16 in, f32 accumulate), scale and log2(e) folded into
// one multiply, online softmax in f32 (exp2), P rounded to f16 as the A operand of O += P·V
// (f32 accumulators in registers). Output dims are split over blockIdx.z in chunks of DC (256
// for head_dim 512: the accumulators of 16 rows × 512 dims would not fit in registers; each
// chunk recomputes S, 1.5× the FLOPs of one pass).
//
// Shared-memory rows are padded by 8 halves (16 bytes) so the 8 rows an ldmatrix phase reads
// fall in distinct banks.

#define FA_MAX_BM 128

__device__ __forceinline__ void fa_cp16(void* smem, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(fa_smem_addr(smem)), "l"(gmem) : "memory");
}
__device__ __forceinline__ void fa_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void fa_wait1() { asm volatile("cp.async.wait_group 1;" ::: "memory"); }

__device__ __forceinline__ float fa_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

template <int HD, int DC, int BN, int RG, int NW>
__device__ __forceinline__ void fa_prefill(const float* q, const u16* kc, const u16* vc, float* out,
                                           const u32* positions, const u32* seq_index, const u32* bt_off,
                                           const u32* bt_flat, const u32* runs, int n_runs, int n_tiles, int tpt,
                                           int n_head, int n_kv_head, int kv_dim, int window, float scale) {
    constexpr int BM = 16 * RG * NW;
    constexpr int FA_THREADS = 32 * NW;
    constexpr int QS = HD + 8, KS = HD + 8, VS = DC + 8;
    constexpr int NT = BN / 8;   // key n-tiles of S
    constexpr int ND = DC / 8;   // dim n-tiles of O
    extern __shared__ __align__(16) u16 fa_smem[];
    u16* Qs = fa_smem;
    u16* Ks = Qs + BM * QS;
    u16* Vs = Ks + 2 * BN * KS;
    __shared__ int row_tok[FA_MAX_BM];
    __shared__ int row_pos[FA_MAX_BM];

    PDL_START();
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int kvh = blockIdx.y, dc0 = blockIdx.z * DC;
    const int group = n_head / n_kv_head;

    // This block's tile: walk the runs (few) to the tile, heaviest first.
    int tile = n_tiles - 1 - (int)blockIdx.x;
    int r = 0;
    for (; r < n_runs - 1; ++r) {
        const int k = ((int)runs[2 * r + 1] + tpt - 1) / tpt;
        if (tile < k) break;
        tile -= k;
    }
    const int t0 = (int)runs[2 * r] + tile * tpt;
    const int nt = min(tpt, (int)runs[2 * r + 1] - tile * tpt);
    const int pmin = (int)positions[t0], pmax = (int)positions[t0 + nt - 1];
    const int lo = window > 0 ? max(0, pmin + 1 - window) : 0;
    const u32* table = bt_flat + bt_off[seq_index[t0]];

    for (int i = tid; i < BM; i += FA_THREADS) {
        const int tk = i / group;
        const bool ok = i < tpt * group && tk < nt;
        row_tok[i] = ok ? t0 + tk : -1;
        row_pos[i] = ok ? (int)positions[t0 + tk] : -1;
    }
    // Q rows to f16 (zeros for padding rows: finite scores, never written out).
    for (int c = tid; c < BM * (HD / 8); c += FA_THREADS) {
        const int row = c / (HD / 8), ch = c % (HD / 8);
        const int tk = row / group;
        uint4 w = make_uint4(0, 0, 0, 0);
        if (row < tpt * group && tk < nt) {
            const int h = kvh * group + row % group;
            const float4* src = (const float4*)(q + ((u64)(t0 + tk) * n_head + h) * HD + ch * 8);
            const float4 x = src[0], y = src[1];
            w = make_uint4(fa_pack(x.x, x.y), fa_pack(x.z, x.w), fa_pack(y.x, y.y), fa_pack(y.z, y.w));
        }
        *(uint4*)(Qs + row * QS + ch * 8) = w;
    }

    // Stage key tile [k0, k0 + BN) into buffer s: keys outside [lo, pmax] are zeros (their scores
    // are masked; zero V keeps 0 · garbage out of the sums).
    const u64 head_off = (u64)kvh * HD;
    auto load_kv = [&](int s, int k0) {
        u16* kd = Ks + s * BN * KS;
        u16* vd = Vs + s * BN * VS;
        for (int c = tid; c < BN * (HD / 8); c += FA_THREADS) {
            const int kk = c / (HD / 8), ch = c % (HD / 8);
            const int key = k0 + kk;
            u16* dst = kd + kk * KS + ch * 8;
            if (key >= lo && key <= pmax) {
                const u64 slot = (u64)table[key >> 4] * 16 + (key & 15);
                fa_cp16(dst, kc + slot * kv_dim + head_off + ch * 8);
            } else {
                *(uint4*)dst = make_uint4(0, 0, 0, 0);
            }
        }
        for (int c = tid; c < BN * (DC / 8); c += FA_THREADS) {
            const int kk = c / (DC / 8), ch = c % (DC / 8);
            const int key = k0 + kk;
            u16* dst = vd + kk * VS + ch * 8;
            if (key >= lo && key <= pmax) {
                const u64 slot = (u64)table[key >> 4] * 16 + (key & 15);
                fa_cp16(dst, vc + slot * kv_dim + head_off + dc0 + ch * 8);
            } else {
                *(uint4*)dst = make_uint4(0, 0, 0, 0);
            }
        }
    };

    float o[RG][ND][4];
    float m[RG][2], l[RG][2];
#pragma unroll
    for (int g = 0; g < RG; ++g) {
#pragma unroll
        for (int n = 0; n < ND; ++n) o[g][n][0] = o[g][n][1] = o[g][n][2] = o[g][n][3] = 0.0f;
        m[g][0] = m[g][1] = -KS_INF;
        l[g][0] = l[g][1] = 0.0f;
    }
    const float sl2 = scale * 1.4426950408889634f;
    // Key tiles start at multiples of BN whatever the tile's rows, so a row's arithmetic (the
    // order of its online-softmax updates) is the same in every tile and step: a token gets the
    // same bits in any chunk (Backend::chunk_invariant).
    const int k_first = lo - lo % BN;
    const int n_kt = (pmax + 1 - k_first + BN - 1) / BN;
    __syncthreads();  // row_pos
    int rp[RG][2];
#pragma unroll
    for (int g = 0; g < RG; ++g) {
        rp[g][0] = row_pos[(warp * RG + g) * 16 + (lane >> 2)];
        rp[g][1] = row_pos[(warp * RG + g) * 16 + (lane >> 2) + 8];
    }

    load_kv(0, k_first);
    fa_commit();
    for (int it = 0; it < n_kt; ++it) {
        const int k0 = k_first + it * BN;
        if (it + 1 < n_kt) load_kv((it + 1) & 1, k0 + BN);
        fa_commit();
        fa_wait1();
        __syncthreads();
        const u16* K = Ks + (it & 1) * BN * KS;
        const u16* V = Vs + (it & 1) * BN * VS;

        // S = Q Kᵀ for this warp's RG × 16 rows × BN keys.
        float s[RG][NT][4];
#pragma unroll
        for (int g = 0; g < RG; ++g)
#pragma unroll
            for (int j = 0; j < NT; ++j) s[g][j][0] = s[g][j][1] = s[g][j][2] = s[g][j][3] = 0.0f;
#pragma unroll
        for (int kd = 0; kd < HD / 16; ++kd) {
            u32 a[RG][4];
#pragma unroll
            for (int g = 0; g < RG; ++g)
                fa_ldsm4(a[g][0], a[g][1], a[g][2], a[g][3],
                         Qs + ((warp * RG + g) * 16 + (lane & 15)) * QS + kd * 16 + 8 * (lane >> 4));
#pragma unroll
            for (int nb = 0; nb < BN / 16; ++nb) {
                u32 b0, b1, b2, b3;
                fa_ldsm4(b0, b1, b2, b3,
                         K + (nb * 16 + (lane & 7) + 8 * (lane >> 4)) * KS + kd * 16 + 8 * ((lane >> 3) & 1));
#pragma unroll
                for (int g = 0; g < RG; ++g) {
                    fa_mma(s[g][2 * nb], a[g][0], a[g][1], a[g][2], a[g][3], b0, b1);
                    fa_mma(s[g][2 * nb + 1], a[g][0], a[g][1], a[g][2], a[g][3], b2, b3);
                }
            }
        }

        // Scale (log2 domain), mask where the tile is cut, online softmax.
        const bool cut = k0 + BN - 1 > pmin || k0 < lo || (window > 0 && k0 <= pmax - window);
#pragma unroll
        for (int g = 0; g < RG; ++g) {
            float mx[2] = {m[g][0], m[g][1]};
#pragma unroll
            for (int j = 0; j < NT; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float v = s[g][j][e] * sl2;
                    if (cut) {
                        const int key = k0 + 8 * j + 2 * (lane & 3) + (e & 1);
                        const int p = rp[g][e >> 1];
                        if (key > p || (window > 0 && key <= p - window)) v = -KS_INF;
                    }
                    s[g][j][e] = v;
                    mx[e >> 1] = fmaxf(mx[e >> 1], v);
                }
            }
            float mu[2], alpha[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
                mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
                mu[i] = mx[i] == -KS_INF ? 0.0f : mx[i];  // a row with no key yet: no NaN from inf - inf
                // Exactly 1 when the maximum stays (a tile a row sees nothing of changes nothing).
                alpha[i] = mx[i] == m[g][i] ? 1.0f : fa_exp2(m[g][i] - mu[i]);
                m[g][i] = mx[i];
            }
#pragma unroll
            for (int j = 0; j < NT; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const float p = fa_exp2(s[g][j][e] - mu[e >> 1]);
                    s[g][j][e] = p;
                    rs[e >> 1] += p;
                }
            }
#pragma unroll
            for (int i = 0; i < 2; ++i) l[g][i] = l[g][i] * alpha[i] + rs[i];
#pragma unroll
            for (int n = 0; n < ND; ++n) {
                o[g][n][0] *= alpha[0];
                o[g][n][1] *= alpha[0];
                o[g][n][2] *= alpha[1];
                o[g][n][3] *= alpha[1];
            }
        }

        // O += P V (P from the S accumulators, rounded to f16).
#pragma unroll
        for (int kc2 = 0; kc2 < BN / 16; ++kc2) {
            u32 a[RG][4];
#pragma unroll
            for (int g = 0; g < RG; ++g) {
                a[g][0] = fa_pack(s[g][2 * kc2][0], s[g][2 * kc2][1]);
                a[g][1] = fa_pack(s[g][2 * kc2][2], s[g][2 * kc2][3]);
                a[g][2] = fa_pack(s[g][2 * kc2 + 1][0], s[g][2 * kc2 + 1][1]);
                a[g][3] = fa_pack(s[g][2 * kc2 + 1][2], s[g][2 * kc2 + 1][3]);
            }
#pragma unroll
            for (int nd = 0; nd < DC / 16; ++nd) {
                u32 b0, b1, b2, b3;
                fa_ldsm4t(b0, b1, b2, b3,
                          V + (kc2 * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * VS + nd * 16 + 8 * (lane >> 4));
#pragma unroll
                for (int g = 0; g < RG; ++g) {
                    fa_mma(o[g][2 * nd], a[g][0], a[g][1], a[g][2], a[g][3], b0, b1);
                    fa_mma(o[g][2 * nd + 1], a[g][0], a[g][1], a[g][2], a[g][3], b2, b3);
                }
            }
        }
        __syncthreads();  // this buffer is refilled by the next iteration's prefetch
    }

    // Finish: each row's sum over its 4 lanes, divide, write the valid rows.
#pragma unroll
    for (int g = 0; g < RG; ++g) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float li = l[g][i];
            li += __shfl_xor_sync(0xffffffffu, li, 1);
            li += __shfl_xor_sync(0xffffffffu, li, 2);
            const float inv = li == 0.0f ? 0.0f : 1.0f / li;
            const int row = (warp * RG + g) * 16 + (lane >> 2) + 8 * i;
            const int tok = row_tok[row];
            if (tok < 0) continue;
            const int h = kvh * group + row % group;
            float* op = out + ((u64)tok * n_head + h) * HD + dc0 + 2 * (lane & 3);
#pragma unroll
            for (int n = 0; n < ND; ++n) {
                *(float2*)(op + 8 * n) = make_float2(o[g][n][2 * i] * inv, o[g][n][2 * i + 1] * inv);
            }
        }
    }
}

// attn_prefill_<HD>_<DC>_<BN>_<RG>x<NW>: ops/attention.rs lists them with their shared memory.
#define FA_PREFILL(HD, DC, BN, RG, NW)                                                                          \
    extern "C" __global__ void __launch_bounds__(32 * NW) attn_prefill_##HD##_##DC##_##BN##_##RG##x##NW(       \
        const float* q, const u16* kc, const u16* vc, float* out, const u32* positions, const u32* seq_index,    \
        const u32* bt_off, const u32* bt_flat, const u32* runs, int n_runs, int n_tiles, int tpt, int n_head,    \
        int n_kv_head, int kv_dim, int window, float scale) {                                                   \
        fa_prefill<HD, DC, BN, RG, NW>(q, kc, vc, out, positions, seq_index, bt_off, bt_flat, runs, n_runs,      \
                                       n_tiles, tpt, n_head, n_kv_head, kv_dim, window, scale);                 \
    }

FA_PREFILL(64, 64, 64, 1, 4)
FA_PREFILL(64, 64, 64, 2, 4)
FA_PREFILL(128, 128, 64, 1, 4)
FA_PREFILL(128, 128, 64, 2, 4)
FA_PREFILL(256, 256, 32, 1, 4)
FA_PREFILL(512, 256, 32, 1, 4)
