//! The CUDA C sources (`kernels/*.cu`), embedded at build time, and the functions each defines.
//! Every module is compiled as one NVRTC program: the shared prelude (`common.cuh`), the headers
//! it lists, then its own source.

pub const COMMON: &str = include_str!("../kernels/common.cuh");
pub const DEQUANT: &str = include_str!("../kernels/dequant.cuh");
pub const Q8: &str = include_str!("../kernels/q8.cuh");

pub struct KernelModule {
    pub name: &'static str,
    /// Headers placed after `common.cuh`, in order.
    pub headers: &'static [&'static str],
    pub source: &'static str,
    /// `extern "C"` kernels the module defines.
    pub functions: &'static [&'static str],
}

impl KernelModule {
    /// The full program text NVRTC compiles.
    pub fn program(&self) -> String {
        let mut s = String::with_capacity(COMMON.len() + self.source.len() + 4096);
        s.push_str(COMMON);
        for h in self.headers {
            s.push('\n');
            s.push_str(h);
        }
        s.push('\n');
        s.push_str(self.source);
        s
    }
}

pub const MODULES: &[KernelModule] = &[
    KernelModule {
        name: "embed",
        headers: &[DEQUANT],
        source: include_str!("../kernels/embed.cu"),
        functions: &["embed"],
    },
    KernelModule {
        name: "norm",
        headers: &[Q8],
        source: include_str!("../kernels/norm.cu"),
        functions: &["rms_norm", "rms_norm_row", "rms_norm_a32", "rms_norm_a256"],
    },
    KernelModule {
        name: "rope",
        headers: &[],
        source: include_str!("../kernels/rope.cu"),
        functions: &["rope"],
    },
    KernelModule {
        name: "quantize",
        headers: &[Q8],
        source: include_str!("../kernels/quantize.cu"),
        functions: &["quantize_a32", "quantize_a256"],
    },
    KernelModule {
        name: "matvec",
        headers: &[DEQUANT],
        source: include_str!("../kernels/matvec.cu"),
        functions: &[
            "matvec_q4_0",
            "matvec_q4_1",
            "matvec_q5_0",
            "matvec_q5_1",
            "matvec_q8_0",
            "matvec_q2_k",
            "matvec_q3_k",
            "matvec_q4_k",
            "matvec_q5_k",
            "matvec_q6_k",
            "matvec_f32",
            "matvec_f16",
            "matvec_bf16",
            "mv_q4_k_1",
            "mv_q4_k_2",
            "mv_q4_k_4",
            "mv_q4_k_8",
            "mv_q6_kr_1",
            "mv_q6_kr_2",
            "mv_q6_kr_4",
            "mv_q6_kr_8",
            "mv_q8_0r_1",
            "mv_q8_0r_2",
            "mv_q8_0r_4",
            "mv_q8_0r_8",
            "mv_q4_k_1x4",
            "mv_q4_k_2x4",
            "mv_q6_kr_1x4",
            "mv_q6_kr_2x4",
            "mv_q8_0r_1x4",
            "mv_q8_0r_2x4",
        ],
    },
    KernelModule {
        name: "convert",
        headers: &[DEQUANT],
        source: include_str!("../kernels/convert.cu"),
        functions: &["dequant_bf16", "f32_to_bf16"],
    },
    KernelModule {
        name: "attention",
        headers: &[],
        source: include_str!("../kernels/attention.cu"),
        functions: &[
            "attention_d1",
            "attention_d2",
            "attention_d4",
            "attention_combine",
        ],
    },
    KernelModule {
        name: "attention_prefill",
        headers: &[],
        source: include_str!("../kernels/attention_prefill.cu"),
        // ops::attention::PREFILL_CFGS, in that order.
        functions: &[
            "attn_prefill_64_64_64_2x4",
            "attn_prefill_64_64_64_1x4",
            "attn_prefill_128_128_64_2x4",
            "attn_prefill_128_128_64_1x4",
            "attn_prefill_256_256_32_1x4",
            "attn_prefill_512_256_32_1x4",
        ],
    },
    KernelModule {
        name: "kv",
        headers: &[],
        source: include_str!("../kernels/kv.cu"),
        functions: &["kv_write"],
    },
    KernelModule {
        name: "act",
        headers: &[Q8],
        source: include_str!("../kernels/act.cu"),
        functions: &[
            "silu_mul",
            "gelu_mul",
            "silu_mul_a32",
            "gelu_mul_a32",
            "silu_mul_a256",
            "gelu_mul_a256",
        ],
    },
    KernelModule {
        name: "argmax",
        headers: &[],
        source: include_str!("../kernels/argmax.cu"),
        functions: &["argmax_rows"],
    },
    KernelModule {
        name: "elementwise",
        headers: &[],
        source: include_str!("../kernels/elementwise.cu"),
        functions: &[
            "add",
            "add_bias",
            "scale_by",
            "scale",
            "copy_cols",
            "softcap",
            "gather_rows",
            "fill",
        ],
    },
];
