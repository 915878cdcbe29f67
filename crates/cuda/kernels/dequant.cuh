// Per-element dequantization of every GGUF type the engine reads (specs/quants.md §2-4), in the
// reference's float order (kestrel_gguf::quant), so results are bit-identical to the CPU.
// Type ids are GGML's.

#define GT_F32 0
#define GT_F16 1
#define GT_Q4_0 2
#define GT_Q4_1 3
#define GT_Q5_0 6
#define GT_Q5_1 7
#define GT_Q8_0 8
#define GT_Q2_K 10
#define GT_Q3_K 11
#define GT_Q4_K 12
#define GT_Q5_K 13
#define GT_Q6_K 14
#define GT_Q8_K 15
#define GT_BF16 30
// Rows repacked at upload for the 16-byte matvecs (mv.cu, ops/matmul.rs `repack_*`).
#define GT_REPACKED 0x100
#define GT_Q8_0_R (GT_REPACKED | GT_Q8_0)
#define GT_Q6_K_R (GT_REPACKED | GT_Q6_K)
#define GT_Q4_0_R (GT_REPACKED | GT_Q4_0)

__device__ __forceinline__ int legacy_nib(const u8* qs, int j) { return (qs[j & 15] >> (4 * (j >> 4))) & 0xF; }

__device__ __forceinline__ void k4_scale_min(const u8* sc, int j, int* s, int* m) {
    if (j < 4) {
        *s = sc[j] & 63;
        *m = sc[j + 4] & 63;
    } else {
        *s = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
        *m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
    }
}

__device__ __forceinline__ int q3k_scale(const u8* sc, int j) {
    int lo4 = j < 8 ? (sc[j] & 0xF) : (sc[j - 8] >> 4);
    int hi2 = (sc[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
    return (lo4 | (hi2 << 4)) - 32;
}

// Element `i` of a row of `cols` values that starts at `row`.
__device__ float dequant_elem(int ty, const u8* row, int i, int cols) {
    switch (ty) {
    case GT_F32: return ((const float*)row)[i];
    case GT_F16: return ldh(row + 2 * i);
    case GT_BF16: return bf2f(ld16(row + 2 * i));
    case GT_Q4_0: {
        const u8* b = row + (i >> 5) * 18;
        return __fmul_rn(ldh(b), (float)(legacy_nib(b + 2, i & 31) - 8));
    }
    case GT_Q4_1: {
        const u8* b = row + (i >> 5) * 20;
        return __fadd_rn(__fmul_rn(ldh(b), (float)legacy_nib(b + 4, i & 31)), ldh(b + 2));
    }
    case GT_Q5_0: {
        const u8* b = row + (i >> 5) * 22;
        int j = i & 31;
        u32 qh = ld32a2(b + 2);
        int c = legacy_nib(b + 6, j) | (((qh >> j) & 1) << 4);
        return __fmul_rn(ldh(b), (float)(c - 16));
    }
    case GT_Q5_1: {
        const u8* b = row + (i >> 5) * 24;
        int j = i & 31;
        u32 qh = ld32(b + 4);
        int c = legacy_nib(b + 8, j) | (((qh >> j) & 1) << 4);
        return __fadd_rn(__fmul_rn(ldh(b), (float)c), ldh(b + 2));
    }
    case GT_Q8_0: {
        const u8* b = row + (i >> 5) * 34;
        return __fmul_rn(ldh(b), (float)(i8)b[2 + (i & 31)]);
    }
    case GT_Q2_K: {
        const u8* b = row + (i >> 8) * 84;
        int k = i & 255, h = k >> 7, s = (k >> 5) & 3, l = k & 31;
        int c = (b[16 + 32 * h + l] >> (2 * s)) & 3;
        int sm = b[k >> 4];
        float d = ldh(b + 80), dmin = ldh(b + 82);
        return __fsub_rn(__fmul_rn(__fmul_rn(d, (float)(sm & 0xF)), (float)c), __fmul_rn(dmin, (float)(sm >> 4)));
    }
    case GT_Q3_K: {
        const u8* b = row + (i >> 8) * 110;
        int k = i & 255, h = k >> 7, s = (k >> 5) & 3, l = k & 31;
        int lo2 = (b[32 + 32 * h + l] >> (2 * s)) & 3;
        int hb = (b[l] >> (k >> 5)) & 1;
        int c = lo2 - 4 * (1 - hb);
        float d = ldh(b + 108);
        return __fmul_rn(__fmul_rn(d, (float)q3k_scale(b + 96, k >> 4)), (float)c);
    }
    case GT_Q4_K: {
        const u8* b = row + (i >> 8) * 144;
        int k = i & 255, p = k >> 6, t = (k >> 5) & 1, l = k & 31;
        int c = (b[16 + 32 * p + l] >> (4 * t)) & 0xF;
        int sc, m;
        k4_scale_min(b + 4, k >> 5, &sc, &m);
        return __fsub_rn(__fmul_rn(__fmul_rn(ldh(b), (float)sc), (float)c), __fmul_rn(ldh(b + 2), (float)m));
    }
    case GT_Q5_K: {
        const u8* b = row + (i >> 8) * 176;
        int k = i & 255, p = k >> 6, t = (k >> 5) & 1, l = k & 31, j = k >> 5;
        int c = ((b[48 + 32 * p + l] >> (4 * t)) & 0xF) | (((b[16 + l] >> j) & 1) << 4);
        int sc, m;
        k4_scale_min(b + 4, j, &sc, &m);
        return __fsub_rn(__fmul_rn(__fmul_rn(ldh(b), (float)sc), (float)c), __fmul_rn(ldh(b + 2), (float)m));
    }
    case GT_Q6_K: {
        const u8* b = row + (i >> 8) * 210;
        int k = i & 255, h = k >> 7, s = (k >> 5) & 3, l = k & 31;
        int lo4 = (b[64 * h + 32 * (s & 1) + l] >> (4 * (s >> 1))) & 0xF;
        int hi2 = (b[128 + 32 * h + l] >> (2 * s)) & 3;
        int c = (lo4 | (hi2 << 4)) - 32;
        float sc = (float)(i8)b[192 + (k >> 4)];
        return __fmul_rn(__fmul_rn(ldh(b + 208), sc), (float)c);
    }
    case GT_Q8_0_R: {
        const int nb = cols >> 5;
        return __fmul_rn(ldh(row + nb * 32 + 2 * (i >> 5)), (float)(i8)row[i]);
    }
    case GT_Q4_0_R: {
        const int nb = cols >> 5;
        return __fmul_rn(ldh(row + nb * 16 + 2 * (i >> 5)), (float)(legacy_nib(row + 16 * (i >> 5), i & 31) - 8));
    }
    case GT_Q6_K_R: {
        const int nb = cols >> 8, b = i >> 8;
        int k = i & 255, h = k >> 7, s = (k >> 5) & 3, l = k & 31, g = l >> 4, li = l & 15;
        const u8* unit = row + 48 * (4 * b + 2 * h + g);
        int lo4 = (unit[16 * (s & 1) + li] >> (4 * (s >> 1))) & 0xF;
        int hi2 = (unit[32 + li] >> (2 * s)) & 3;
        int c = (lo4 | (hi2 << 4)) - 32;
        float sc = (float)(i8)row[nb * 192 + 16 * b + (k >> 4)];
        return __fmul_rn(__fmul_rn(ldh(row + nb * 208 + 2 * b), sc), (float)c);
    }
    case GT_Q8_K: {
        const u8* b = row + (i >> 8) * 292;
        return __fmul_rn(*(const float*)b, (float)(i8)b[4 + (i & 255)]);
    }
    default: return __int_as_float(0x7fc00000);
    }
}
