// Store each token's K and V rows (f32) into the f16 paged pools at the token's slot.
// grid = (ceil(kv_dim / blockDim), n_tokens); slots from the step buffer.

extern "C" __global__ void kv_write(const float* k, const float* v, u16* kpool, u16* vpool,
                                    const u32* slots, int kv_dim) {
    PDL_START();
    const int t = blockIdx.y;
    const u64 dst = (u64)slots[t] * kv_dim;
    const u64 src = (u64)t * kv_dim;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < kv_dim; i += gridDim.x * blockDim.x) {
        kpool[dst + i] = f2h(k[src + i]);
        vpool[dst + i] = f2h(v[src + i]);
    }
}
