// Small elementwise ops on f32 tensors. Grid-stride loops over n values.

#define GRID_LOOP(n) \
    PDL_START();     \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

// x += y
extern "C" __global__ void add(float* x, const float* y, u64 n) {
    GRID_LOOP(n) x[i] = __fadd_rn(x[i], y[i]);
}

// x[r][c] += b[c]
extern "C" __global__ void add_bias(float* x, const float* b, int cols, u64 n) {
    GRID_LOOP(n) x[i] = __fadd_rn(x[i], b[i % cols]);
}

// x *= s[0] (a one-element weight on the device)
extern "C" __global__ void scale_by(float* x, const float* s, u64 n) {
    const float v = s[0];  // a weight: no predecessor writes it
    GRID_LOOP(n) x[i] = __fmul_rn(x[i], v);
}

// x *= c
extern "C" __global__ void scale(float* x, float c, u64 n) {
    GRID_LOOP(n) x[i] = __fmul_rn(x[i], c);
}

// out[t][j] = src[t][col0 + j] for j < out_cols (one layer's slice of per-layer rows); n = rows * out_cols
extern "C" __global__ void copy_cols(const float* src, int src_cols, int col0, float* out, int out_cols, u64 n) {
    GRID_LOOP(n) {
        const u64 t = i / out_cols, j = i % out_cols;
        out[i] = src[t * src_cols + col0 + j];
    }
}

// x = cap * tanh(x / cap)
extern "C" __global__ void softcap(float* x, float cap, u64 n) {
    GRID_LOOP(n) x[i] = __fmul_rn(cap, tanh_f(__fdiv_rn(x[i], cap)));
}

// out[k] = x[rows[k]] for k < n_rows (rows: the step's logit rows). grid = (.., n_rows).
extern "C" __global__ void gather_rows(const float* x, const u32* rows, int cols, float* out) {
    PDL_START();
    const int k = blockIdx.y;
    const float* src = x + (u64)rows[k] * cols;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x)
        out[(u64)k * cols + c] = src[c];
}

// x[i] = v (tests poison outputs with NaN before each run)
extern "C" __global__ void fill(float* x, float v, u64 n) {
    GRID_LOOP(n) x[i] = v;
}
