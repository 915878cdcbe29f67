//! The CUDA C sources (`kernels/*.cu`), embedded at build time, and the functions each defines.
//! Every module is compiled as one NVRTC program: the shared prelude (`common.cuh`), the headers
//! it lists, then its own source.

pub const COMMON: &str = include_str!("../kernels/common.cuh");
pub const DEQUANT: &str = include_str!("../kernels/dequant.cuh");
pub const Q8: &str = include_str!("../kernels/q8.cuh");
pub const MMA: &str = include_str!("../kernels/mma.cuh");

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

/// The 16-byte matvecs `mv_<type>_<NT>_<R>` (kernels/mv.cu), by type (q4_k, q6_kr, q8_0r,
/// q4_0r), then (NT, R) in the order of ops/matmul.rs `mv_name`.
pub const MV_FUNCTIONS: &[&str] = &[
    "mv_q4_k_1_1",
    "mv_q4_k_1_2",
    "mv_q4_k_1_4",
    "mv_q4_k_2_1",
    "mv_q4_k_2_2",
    "mv_q4_k_2_4",
    "mv_q4_k_4_1",
    "mv_q4_k_4_2",
    "mv_q4_k_4_4",
    "mv_q4_k_8_1",
    "mv_q4_k_8_2",
    "mv_q4_k_8_4",
    "mv_q4_k_16_1",
    "mv_q4_k_16_2",
    "mv_q6_kr_1_1",
    "mv_q6_kr_1_2",
    "mv_q6_kr_1_4",
    "mv_q6_kr_2_1",
    "mv_q6_kr_2_2",
    "mv_q6_kr_2_4",
    "mv_q6_kr_4_1",
    "mv_q6_kr_4_2",
    "mv_q6_kr_4_4",
    "mv_q6_kr_8_1",
    "mv_q6_kr_8_2",
    "mv_q6_kr_8_4",
    "mv_q6_kr_16_1",
    "mv_q6_kr_16_2",
    "mv_q8_0r_1_1",
    "mv_q8_0r_1_2",
    "mv_q8_0r_1_4",
    "mv_q8_0r_2_1",
    "mv_q8_0r_2_2",
    "mv_q8_0r_2_4",
    "mv_q8_0r_4_1",
    "mv_q8_0r_4_2",
    "mv_q8_0r_4_4",
    "mv_q8_0r_8_1",
    "mv_q8_0r_8_2",
    "mv_q8_0r_8_4",
    "mv_q8_0r_16_1",
    "mv_q8_0r_16_2",
    "mv_q4_0r_1_1",
    "mv_q4_0r_1_2",
    "mv_q4_0r_1_4",
    "mv_q4_0r_2_1",
    "mv_q4_0r_2_2",
    "mv_q4_0r_2_4",
    "mv_q4_0r_4_1",
    "mv_q4_0r_4_2",
    "mv_q4_0r_4_4",
    "mv_q4_0r_8_1",
    "mv_q4_0r_8_2",
    "mv_q4_0r_8_4",
    "mv_q4_0r_16_1",
    "mv_q4_0r_16_2",
];

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
        ],
    },
    KernelModule {
        name: "convert",
        headers: &[DEQUANT],
        source: include_str!("../kernels/convert.cu"),
        functions: &["dequant_bf16", "f32_to_bf16"],
    },
    KernelModule {
        name: "mv",
        headers: &[],
        source: include_str!("../kernels/mv.cu"),
        functions: MV_FUNCTIONS,
    },
    KernelModule {
        name: "attention",
        headers: &[MMA],
        source: include_str!("../kernels/attention.cu"),
        functions: &[
            "attention_d1",
            "attention_d2",
            "attention_d4",
            "attn_fd_1",
            "attn_fd_2",
            "attn_fd_4",
            "attn_fd_8",
            "attn_fdt_64",
            "attn_fdt_128",
            "attn_fdt_256",
            "attention_combine",
        ],
    },
    KernelModule {
        name: "attention_prefill",
        headers: &[MMA],
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
