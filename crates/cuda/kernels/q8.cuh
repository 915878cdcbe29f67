// Per-warp 8-bit activation quantizers (ops/matmul.rs `ActFmt`), shared by quantize.cu and the
// producers that quantize their own output for the next matmul (norm.cu, act.cu). Bit-identical
// to the CPU backend's quantizers; see quantize.cu for the rules and layouts.

// One warp quantizes one block of 32; lane `lane` holds value v. Block b's outputs go to
// codes[32b..], d[b], s[b] (the caller passes pointers already offset to block b). The rule of
// the CPU backend (kestrel_cpu::quant_dot::acts, llama.cpp's x86 quantize_row_q8_0/_q8_1):
// d = amax / 127, codes = nearest-even(x * (127 / amax)) (not x * (1/d), not roundf), s = d * sum
// with the unrounded d; d and s stored as f16.
__device__ __forceinline__ void q8_32_warp(float v, int lane, i8* codes, u16* d_out, u16* s_out) {
    const float amax = warp_max(fabsf(v));
    const float d = __fdiv_rn(amax, 127.0f);
    const float id = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
    // |v * id| <= 127 up to an ulp, so the CPU's int8 saturation never triggers.
    const float qf = fminf(fmaxf(rintf(__fmul_rn(v, id)), -128.0f), 127.0f);
    const int q = (int)qf;
    const int sum = warp_sum_i(q);
    codes[lane] = (i8)q;
    if (lane == 0) {
        *d_out = f2h(d);
        *s_out = f2h(__fmul_rn((float)sum, d));
    }
}

// One warp quantizes one block of 256; lane `lane` holds values 8*lane .. 8*lane+7.
__device__ __forceinline__ void q8_256_warp(const float* v, int lane, i8* codes, float* d_out, short* sums) {
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
    int q[8];
    if (am == 0.0f) {
#pragma unroll
        for (int k = 0; k < 8; ++k) q[k] = 0;
        if (lane == 0) *d_out = 0.0f;
    } else {
        const float iscale = __fdiv_rn(-127.0f, vm);
#pragma unroll
        for (int k = 0; k < 8; ++k) q[k] = (int)fminf(fmaxf(rintf(__fmul_rn(iscale, v[k])), -127.0f), 127.0f);
        if (lane == 0) *d_out = __frcp_rn(iscale);
    }
    u32 lo = 0, hi = 0;
    int part = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        lo |= ((u32)(q[k] & 0xFF)) << (8 * k);
        hi |= ((u32)(q[k + 4] & 0xFF)) << (8 * k);
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) part += q[k];
    *(uint2*)(codes + 8 * lane) = make_uint2(lo, hi);
    const int pair = part + __shfl_down_sync(0xffffffffu, part, 1);
    if ((lane & 1) == 0) sums[lane >> 1] = (short)pair;
}
