// Tensor-core helpers shared by the attention kernels (attention.cu flash-decoding,
// attention_prefill.cu): ldmatrix fragments from shared memory, mma.sync m16n8k16 with f16 inputs
// and f32 accumulators, f32 pairs packed to f16x2.

__device__ __forceinline__ u32 fa_smem_addr(const void* p) {
    u32 s;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(s) : "l"(p));
    return s;
}
__device__ __forceinline__ void fa_ldsm4(u32& r0, u32& r1, u32& r2, u32& r3, const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(fa_smem_addr(p)));
}
__device__ __forceinline__ void fa_ldsm4t(u32& r0, u32& r1, u32& r2, u32& r3, const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(fa_smem_addr(p)));
}
// c += a · b, one m16n8k16 tile (f16 inputs, f32 accumulators).
__device__ __forceinline__ void fa_mma(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
// Two f32 -> one f16x2 register, `lo` in the low half (round to nearest even).
__device__ __forceinline__ u32 fa_pack(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
