// Embedding lookup: out[t] = dequant(table row tokens[t]) * scale, for every GGUF type in
// dequant.cuh. grid = (ceil(cols / blockDim), n_tokens). `tokens` is the step buffer's array.

extern "C" __global__ void embed(const u8* table, u64 row_bytes, int ty, int cols, const u32* tokens,
                                 float scale, float* out) {
    PDL_START();
    const int t = blockIdx.y;
    const u8* row = table + (u64)tokens[t] * row_bytes;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < cols; i += gridDim.x * blockDim.x) {
        float v = dequant_elem(ty, row, i, cols);
        if (scale != 1.0f) v = __fmul_rn(v, scale);
        out[(u64)t * cols + i] = v;
    }
}
