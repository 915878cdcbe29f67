#!/usr/bin/env python3
"""Oracle for the Gemma 3 / Gemma 4 decoders: tiny random-weight models built with Hugging Face
transformers' own classes (Gemma3ForCausalLM, Gemma4ForCausalLM; CPU, float32, eager attention),
their logits for a fixed prompt and greedy continuation, and the same weights written as GGUF in
llama.cpp's tensor naming and shapes (specs/gemma.md §1, §3).

Dev-only: needs torch and transformers (>= 5.5, which has `transformers.models.gemma4`) besides
`gguf` 0.19.0 and numpy; CI needs none of them, only the committed fixtures.

    python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch transformers gguf==0.19.0
    /tmp/hfvenv/bin/python tools/gemma_oracle.py      # writes crates/model/tests/fixtures/

Writes, per model NAME:
    NAME.f32.gguf    every tensor F32
    NAME.q8_0.gguf   the mix of real quantized files: matrices Q8_0, per_layer_model_proj BF16,
                     PLE inp_gate/proj, norms and scalars F32
and gemma_oracle.json with, per model and per file, the oracle run on exactly the weights that
file holds (the Q8_0 file's weights dequantized with gguf-py): `tokens` = prompt + greedy
continuation, `logits[i]` = the logits after tokens[..= i] (one row per position but the last).

Models (each covers what the comment says):
    gemma4-ple-shared  E2B-like: 3:1 sliding:global bool pattern, head_dim 32 sliding /
                       64 global, proportional RoPE (rope_freqs), window 4, KV sharing of the 4 tail
                       layers (sliding -> layer 2, global -> layer 3), double-wide FFN on shared
                       layers (per-layer feed_forward_length), PLE (P = 16), layer_output_scale,
                       softcap 30; junk attn_k/attn_v/attn_k_norm on one shared layer (must be ignored)
    gemma4-k-eq-v      31B-like: 5:1 pattern, attention_k_eq_v (no attn_v on the global layer: V is
                       the raw K projection), per-layer head_count_kv [2,2,2,2,2,1], no PLE
    gemma3-swa         Gemma 3: every 6th layer global, window 4, linear RoPE scaling x8 on the
                       global layer only, attention scale 1/sqrt(head_dim), norms stored as 1 + w

Deterministic for a given torch build (fixed seeds). Norm weights are stored raw for Gemma 4 and
with +1 baked in for Gemma 3, as llama.cpp's converter does.
"""

import importlib.metadata
import json
import pathlib

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as Q

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates" / "model" / "tests" / "fixtures"
N_GEN = 8
VOCAB = 128


# ----------------------------------------------------------------------------- models


def gemma4_ple_shared():
    from transformers import Gemma4TextConfig

    # 8 layers, 3:1: sliding 0,1,2 4,5,6; global 3, 7. First shared layer 4 (after a global one).
    types = ["sliding_attention"] * 3 + ["full_attention"]
    cfg = Gemma4TextConfig(
        vocab_size=VOCAB,
        vocab_size_per_layer_input=VOCAB,
        hidden_size=64,
        intermediate_size=32,
        num_hidden_layers=8,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        global_head_dim=64,
        layer_types=types * 2,
        sliding_window=4,
        hidden_size_per_layer_input=16,
        num_kv_shared_layers=4,
        use_double_wide_mlp=True,
        attention_k_eq_v=False,
        final_logit_softcapping=30.0,
        max_position_embeddings=4096,
    )
    return cfg


def gemma4_k_eq_v():
    from transformers import Gemma4TextConfig

    cfg = Gemma4TextConfig(
        vocab_size=VOCAB,
        vocab_size_per_layer_input=VOCAB,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_global_key_value_heads=1,
        head_dim=16,
        global_head_dim=32,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
        sliding_window=5,
        hidden_size_per_layer_input=0,
        num_kv_shared_layers=0,
        attention_k_eq_v=True,
        final_logit_softcapping=30.0,
        max_position_embeddings=4096,
    )
    return cfg


def gemma3_swa():
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=4,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
        final_logit_softcapping=None,
        max_position_embeddings=4096,
    )
    return cfg


def build(cfg, seed):
    """The HF model with every weight drawn at random (O(1) activations, non-trivial norms)."""
    from transformers import Gemma3ForCausalLM, Gemma4ForCausalLM

    cfg._attn_implementation = "eager"
    is4 = cfg.model_type.startswith("gemma4")
    torch.manual_seed(seed)
    model = (Gemma4ForCausalLM if is4 else Gemma3ForCausalLM)(cfg).eval().float()
    g = torch.Generator().manual_seed(seed)

    def u(shape, lo, hi):
        return torch.rand(shape, generator=g) * (hi - lo) + lo

    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if not name.endswith("weight") and not name.endswith("layer_scalar"):
                continue
            if name.endswith("layer_scalar"):
                p.copy_(u(p.shape, 0.3, 1.0))
            elif "norm" in name:
                qk = "q_norm" in name or "k_norm" in name
                if is4:  # used as w
                    p.copy_(u(p.shape, 0.2, 0.6) if qk else u(p.shape, 0.5, 1.5))
                else:  # used as 1 + w
                    p.copy_(u(p.shape, -0.5, 0.5))
            elif "embed_tokens_per_layer" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.25)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 2.0 / cfg.hidden_size**0.5)
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    return model


# ----------------------------------------------------------------------------- GGUF


def gguf_tensors(model, cfg, junk_kv_layer=None):
    """(name, f32 array in HF [out, in] order = ggml [in, out]) in llama.cpp naming."""
    is4 = cfg.model_type.startswith("gemma4")
    sd = {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}
    out = []

    def norm(w):
        return w if is4 else w + np.float32(1.0)

    out.append(("token_embd.weight", sd["model.embed_tokens.weight"]))
    out.append(("output_norm.weight", norm(sd["model.norm.weight"])))
    if is4 and cfg.hidden_size_per_layer_input:
        out.append(("per_layer_token_embd.weight", sd["model.embed_tokens_per_layer.weight"]))
        out.append(("per_layer_model_proj.weight", sd["model.per_layer_model_projection.weight"]))
        out.append(("per_layer_proj_norm.weight", sd["model.per_layer_projection_norm.weight"]))
    if is4:
        # Proportional RoPE as the converter writes it: 1.0 for the rotated pairs, 1e30 after.
        hd = cfg.per_layer_config["full_attention"].head_dim
        rp = cfg.rope_parameters["full_attention"]
        n_rope = int(rp.get("partial_rotary_factor", 1.0) * hd // 2)
        f = np.full(hd // 2, 1e30, dtype=np.float32)
        f[:n_rope] = 1.0
        out.append(("rope_freqs.weight", f))
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "post_feedforward_layernorm": "post_ffw_norm",
        "per_layer_input_gate": "inp_gate",
        "per_layer_projection": "proj",
        "post_per_layer_input_norm": "post_norm",
    }
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            key = f"model.layers.{i}.{hf}.weight"
            if key in sd:
                w = sd[key]
                out.append((f"blk.{i}.{gg}.weight", norm(w) if "norm" in gg else w))
        if f"model.layers.{i}.layer_scalar" in sd:
            out.append((f"blk.{i}.layer_output_scale.weight", sd[f"model.layers.{i}.layer_scalar"]))
        if i == junk_kv_layer:
            # A shared-KV layer's own K/V weights, which HF and llama.cpp ignore.
            rng = np.random.default_rng(i)
            hd = sd[f"model.layers.{i}.self_attn.q_norm.weight"].shape[0]
            kv = cfg.per_layer_config[i].num_key_value_heads * hd
            for gg, shape in [("attn_k", (kv, cfg.hidden_size)), ("attn_v", (kv, cfg.hidden_size)), ("attn_k_norm", (hd,))]:
                out.append((f"blk.{i}.{gg}.weight", (rng.standard_normal(shape) * 100).astype(np.float32)))
    return out


def storage_type(name, arr, quant):
    if not quant or arr.ndim != 2:
        return Q.F32
    if name == "per_layer_model_proj.weight":
        return Q.BF16
    if name.endswith((".inp_gate.weight", ".proj.weight")):
        return Q.F32
    return Q.Q8_0 if arr.shape[1] % 32 == 0 else Q.F32


def meta(cfg):
    """(key, value) GGUF metadata, as llama.cpp's converter writes it."""
    is4 = cfg.model_type.startswith("gemma4")
    a = "gemma4" if is4 else "gemma3"
    n = cfg.num_hidden_layers
    kv = [
        ("general.name", f"tiny {a} oracle"),
        (f"{a}.context_length", cfg.max_position_embeddings),
        (f"{a}.embedding_length", cfg.hidden_size),
        (f"{a}.block_count", n),
        (f"{a}.attention.head_count", cfg.num_attention_heads),
        (f"{a}.attention.layer_norm_rms_epsilon", float(cfg.rms_norm_eps)),
        (f"{a}.attention.sliding_window", cfg.sliding_window),
    ]
    if is4:
        from transformers.models.gemma4.modeling_gemma4 import Gemma4TextMLP

        plc = cfg.per_layer_config
        swa = [t == "sliding_attention" for t in cfg.layer_types]
        hd_swa = plc["sliding_attention"].head_dim
        hd_g = plc["full_attention"].head_dim
        kvh = [plc[i].num_key_value_heads for i in range(n)]
        ff = [Gemma4TextMLP(cfg, i).intermediate_size for i in range(n)]
        kv += [
            (f"{a}.feed_forward_length", ff if len(set(ff)) > 1 else ff[0]),
            (f"{a}.attention.head_count_kv", kvh if len(set(kvh)) > 1 else kvh[0]),
            (f"{a}.attention.key_length", hd_g),
            (f"{a}.attention.value_length", hd_g),
            (f"{a}.attention.key_length_swa", hd_swa),
            (f"{a}.attention.value_length_swa", hd_swa),
            (f"{a}.rope.dimension_count", hd_g),
            (f"{a}.rope.dimension_count_swa", hd_swa),
            (f"{a}.rope.freq_base", float(cfg.rope_parameters["full_attention"]["rope_theta"])),
            (f"{a}.rope.freq_base_swa", float(cfg.rope_parameters["sliding_attention"]["rope_theta"])),
            (f"{a}.attention.sliding_window_pattern", swa),
            (f"{a}.attention.shared_kv_layers", cfg.num_kv_shared_layers),
            (f"{a}.embedding_length_per_layer_input", cfg.hidden_size_per_layer_input),
            (f"{a}.final_logit_softcapping", float(cfg.final_logit_softcapping)),
        ]
    else:
        rp = cfg.rope_parameters["full_attention"]
        kv += [
            (f"{a}.feed_forward_length", cfg.intermediate_size),
            (f"{a}.attention.head_count_kv", cfg.num_key_value_heads),
            (f"{a}.attention.key_length", cfg.head_dim),
            (f"{a}.attention.value_length", cfg.head_dim),
            (f"{a}.rope.freq_base", float(rp["rope_theta"])),
            (f"{a}.rope.scaling.type", "linear"),
            (f"{a}.rope.scaling.factor", float(rp["factor"])),
        ]
    return a, kv


def write_gguf(path, arch, kv, tensors, quant):
    """Write the file; return {name: f32 values exactly as stored} (dequantized)."""
    w = gguf.GGUFWriter(str(path), arch)
    for k, v in kv:
        if isinstance(v, bool) or (isinstance(v, list) and isinstance(v[0], bool)):
            w.add_array(k, v) if isinstance(v, list) else w.add_bool(k, v)
        elif isinstance(v, list):
            w.add_array(k, [int(x) for x in v])
        elif isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        else:
            w.add_uint32(k, int(v))
    stored = {}
    for name, arr in tensors:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        ty = storage_type(name, arr, quant)
        if ty == Q.F32:
            w.add_tensor(name, arr)
            stored[name] = arr
        else:
            q = gguf.quants.quantize(arr, ty)
            w.add_tensor(name, q, raw_dtype=ty)
            stored[name] = gguf.quants.dequantize(q, ty).reshape(arr.shape).astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def load_stored(model, cfg, stored):
    """Put the stored (possibly quantized) weights back into the HF model."""
    is4 = cfg.model_type.startswith("gemma4")
    sd = model.state_dict()
    with torch.no_grad():
        for hf_key, t in sd.items():
            gg = hf_to_gguf(hf_key)
            if gg is None or gg not in stored:
                continue
            v = stored[gg]
            if "norm" in gg and not is4:
                v = v - np.float32(1.0)
            t.copy_(torch.from_numpy(v.reshape(t.shape)))


def hf_to_gguf(k):
    top = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "model.embed_tokens_per_layer.weight": "per_layer_token_embd.weight",
        "model.per_layer_model_projection.weight": "per_layer_model_proj.weight",
        "model.per_layer_projection_norm.weight": "per_layer_proj_norm.weight",
    }
    if k in top:
        return top[k]
    parts = k.split(".")
    if parts[:2] != ["model", "layers"]:
        return None
    i, rest = parts[2], ".".join(parts[3:])
    if rest == "layer_scalar":
        return f"blk.{i}.layer_output_scale.weight"
    m = {
        "input_layernorm.weight": "attn_norm",
        "self_attn.q_proj.weight": "attn_q",
        "self_attn.k_proj.weight": "attn_k",
        "self_attn.v_proj.weight": "attn_v",
        "self_attn.o_proj.weight": "attn_output",
        "self_attn.q_norm.weight": "attn_q_norm",
        "self_attn.k_norm.weight": "attn_k_norm",
        "post_attention_layernorm.weight": "post_attention_norm",
        "pre_feedforward_layernorm.weight": "ffn_norm",
        "mlp.gate_proj.weight": "ffn_gate",
        "mlp.up_proj.weight": "ffn_up",
        "mlp.down_proj.weight": "ffn_down",
        "post_feedforward_layernorm.weight": "post_ffw_norm",
        "per_layer_input_gate.weight": "inp_gate",
        "per_layer_projection.weight": "proj",
        "post_per_layer_input_norm.weight": "post_norm",
    }
    return f"blk.{i}.{m[rest]}.weight" if rest in m else None


# ----------------------------------------------------------------------------- oracle runs


@torch.no_grad()
def oracle(model, prompt):
    """Greedy continuation (full recompute each step, no cache) and all positions' logits."""
    ids = list(prompt)
    margins = []
    for _ in range(N_GEN):
        logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1]
        top = torch.topk(logits, 2).values
        margins.append(float(top[0] - top[1]))
        ids.append(int(torch.argmax(logits)))
    # The cached path must agree (HF once broke KV sharing without a cache: transformers#45242).
    gen = model.generate(torch.tensor([prompt]), max_new_tokens=N_GEN, do_sample=False, use_cache=True)
    assert gen[0].tolist() == ids, (gen[0].tolist(), ids)
    logits = model(torch.tensor([ids[:-1]]), use_cache=False).logits[0]
    assert torch.argmax(logits[len(prompt) - 1 :], dim=-1).tolist() == ids[len(prompt) :]
    return ids, logits.numpy().astype(np.float32), min(margins)


def rows(a):
    return [[float(f"{x:.8g}") for x in r] for r in a]


def main():
    import transformers

    assert hasattr(transformers, "Gemma4ForCausalLM"), "this transformers has no Gemma 4"
    OUT.mkdir(parents=True, exist_ok=True)
    cases = [
        ("gemma4-ple-shared", gemma4_ple_shared, 4),
        ("gemma4-k-eq-v", gemma4_k_eq_v, None),
        ("gemma3-swa", gemma3_swa, None),
    ]
    doc = {
        "generator": "tools/gemma_oracle.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "gguf": importlib.metadata.version("gguf"),
        "n_gen": N_GEN,
        "models": [],
    }
    for name, make, junk in cases:
        cfg = make()
        # A seed whose greedy steps have a clear winner (margin >= 0.05) for both files, so a
        # correct engine's greedy tokens cannot flip on rounding.
        for seed in range(1, 100):
            model = build(cfg, seed)
            prompt = torch.randint(0, VOCAB, (12,), generator=torch.Generator().manual_seed(1000 + seed)).tolist()
            arch, kv = meta(cfg)
            entry = {"name": name, "arch": arch, "seed": seed, "prompt": prompt, "files": {}}
            ok = True
            for kind, quant in [("f32", False), ("q8_0", True)]:
                path = OUT / f"{name}.{kind}.gguf"
                stored = write_gguf(path, arch, kv, gguf_tensors(model, cfg, junk), quant)
                m = build(cfg, seed)
                load_stored(m, cfg, stored)
                ids, logits, margin = oracle(m, prompt)
                ok &= margin >= 0.05
                entry["files"][kind] = {
                    "gguf": path.name,
                    "bytes": path.stat().st_size,
                    "tokens": ids,
                    "min_greedy_margin": margin,
                    "logits": rows(logits),
                }
            if ok:
                break
        print(f"{name}: seed {seed}, " + ", ".join(f"{k} {v['bytes']} bytes, margin {v['min_greedy_margin']:.3f}" for k, v in entry["files"].items()))
        doc["models"].append(entry)
    (OUT / "gemma_oracle.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
