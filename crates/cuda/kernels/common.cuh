// Shared prelude, prepended to every kernel source before NVRTC compiles it (no #include: the
// NVRTC from PyPI ships no CUDA headers, so everything needed is defined here).
//
// Float conventions: where the CPU reference evaluates `a * b + c` with two roundings, kernels
// write __fmul_rn / __fadd_rn so NVRTC cannot contract them into one FMA; transcendental
// functions are evaluated in double and rounded once, which is what a correctly rounded f32 libm
// gives. Together these keep elementwise ops bit-identical (or within an ulp) to the CPU backend.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef long long i64;

#define KS_INF __int_as_float(0x7f800000)

// f16 <-> f32 (round to nearest even), bf16 -> f32.
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
// Round an f32 to the nearest f16 value, returned as f32.
__device__ __forceinline__ float round_f16(float f) { return h2f(f2h(f)); }
__device__ __forceinline__ float bf2f(u16 h) { return __uint_as_float(((u32)h) << 16); }

// Signed 4 x int8 dot product with int32 accumulate.
__device__ __forceinline__ int dp4a(int a, int b, int c) {
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

// Little-endian loads. `ld32a2` needs only 2-byte alignment (blocks of 18, 22, 34, 110, 210 bytes).
__device__ __forceinline__ u16 ld16(const u8* p) { return *(const u16*)p; }
__device__ __forceinline__ u32 ld32(const u8* p) { return *(const u32*)p; }
__device__ __forceinline__ u32 ld32a2(const u8* p) {
    return (u32)ld16(p) | ((u32)ld16(p + 2) << 16);
}
__device__ __forceinline__ float ldh(const u8* p) { return h2f(ld16(p)); }

// Subtract `s` from each byte of `w` (each byte < 128, s <= 128): the result bytes are int8.
__device__ __forceinline__ int sub_bytes(u32 w, u32 s) {
    return (int)(((w | 0x80808080u) - s * 0x01010101u) ^ 0x80808080u);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ int warp_sum_i(int v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Programmatic dependent launch (sm_90+; backend.rs launches every kernel with the PDL
// attribute when it is on). A kernel may then start while its predecessor still runs: before
// reading anything a predecessor wrote, or writing anything a predecessor may still read, it
// calls PDL_WAIT (which returns once the predecessor has finished and its writes are visible;
// at once when there is no programmatic dependency). PDL_TRIGGER, called right after, lets the
// successor start launching (its blocks run until their own PDL_WAIT: the matvecs load their
// weights first). Every kernel does both, before its first dependent access.
#if __CUDA_ARCH__ >= 900
#define PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#define PDL_TRIGGER() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#else
#define PDL_WAIT() ((void)0)
#define PDL_TRIGGER() ((void)0)
#endif
#define PDL_START() \
    do {            \
        PDL_WAIT(); \
        PDL_TRIGGER(); \
    } while (0)

// Correctly rounded (up to double rounding) f32 exp / tanh / cos / sin.
__device__ __forceinline__ float exp_f(float x) { return (float)exp((double)x); }
__device__ __forceinline__ float tanh_f(float x) { return (float)tanh((double)x); }
