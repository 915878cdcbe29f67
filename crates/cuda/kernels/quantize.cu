// f32 activations -> Q8_1 blocks (36 bytes: f16 d, f16 s, 32 x int8), one warp per block of 32.
// Same rule as the CPU reference (kestrel_gguf::quant::quantize_q8_1): d = amax/127,
// q = roundf(x * (1/d)) clamped to [-127, 127], s = fp16(d_f32 * sum(q)); bit-identical output.
// Rows are contiguous and cols a multiple of 32, so block b covers x[32b .. 32b+32].

extern "C" __global__ void quantize_q8_1(const float* x, u8* out, u64 n_blocks) {
    const u64 b = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (b >= n_blocks) return;  // uniform per warp
    const float v = x[b * 32 + lane];
    const float amax = warp_max(fabsf(v));
    const float d = __fdiv_rn(amax, 127.0f);
    const float id = d != 0.0f ? __frcp_rn(d) : 0.0f;
    const float qf = fminf(fmaxf(roundf(__fmul_rn(v, id)), -127.0f), 127.0f);
    const int q = (int)qf;
    const int sum = warp_sum_i(q);
    u8* blk = out + b * 36;
    blk[4 + lane] = (u8)(i8)q;
    if (lane == 0) {
        *(u16*)blk = f2h(d);
        *(u16*)(blk + 2) = f2h(__fmul_rn((float)sum, d));
    }
}

// f32 activations -> Q8_K blocks (292 bytes: f32 d, 256 x int8, 16 x int16 per-16 sums), one
// warp per block of 256, each lane holding 8 consecutive values. The CPU reference rule
// (kestrel_gguf::quant::quantize_q8_k), bit for bit: the largest-magnitude value (first on ties)
// maps to -127, iscale = -127 / vmax, q = nearest (ties to even) of iscale * x clamped to
// [-127, 127], d = 1 / iscale; an all-zero block is all zeros. K-quant weights pair with these,
// as on the CPU, so both backends form the same integer sums.
extern "C" __global__ void quantize_q8_k(const float* x, u8* out, u64 n_blocks) {
    const u64 b = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (b >= n_blocks) return;  // uniform per warp
    const float* xb = x + b * 256 + lane * 8;
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = xb[k];
    float am = 0.0f, vm = 0.0f;
    int ai = 1 << 30;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        if (fabsf(v[k]) > am) {
            am = fabsf(v[k]);
            vm = v[k];
            ai = lane * 8 + k;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float oam = __shfl_xor_sync(0xffffffffu, am, o);
        const float ovm = __shfl_xor_sync(0xffffffffu, vm, o);
        const int oai = __shfl_xor_sync(0xffffffffu, ai, o);
        if (oam > am || (oam == am && oai < ai)) {
            am = oam;
            vm = ovm;
            ai = oai;
        }
    }
    u8* blk = out + b * 292;
    int q[8];
    if (am == 0.0f) {
#pragma unroll
        for (int k = 0; k < 8; ++k) q[k] = 0;
    } else {
        const float iscale = __fdiv_rn(-127.0f, vm);
#pragma unroll
        for (int k = 0; k < 8; ++k) q[k] = (int)fminf(fmaxf(rintf(__fmul_rn(iscale, v[k])), -127.0f), 127.0f);
        if (lane == 0) *(float*)blk = __frcp_rn(iscale);
    }
    if (am == 0.0f && lane == 0) *(float*)blk = 0.0f;
    int part = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        blk[4 + lane * 8 + k] = (u8)(i8)q[k];
        part += q[k];
    }
    const int pair = part + __shfl_down_sync(0xffffffffu, part, 1);
    if ((lane & 1) == 0) *(short*)(blk + 260 + lane) = (short)pair;
}
