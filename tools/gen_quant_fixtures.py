#!/usr/bin/env python3
"""Make the bit-exactness fixtures of crates/gguf/tests/dequant.rs from PyPI gguf 0.19.0.

    python3 tools/gen_quant_fixtures.py            # writes crates/gguf/tests/fixtures/

Deterministic (fixed seed): rerunning it must reproduce the committed files byte for byte.

Dequantization fixtures, one file per type, `dequant_<TYPE>.bin`:
    b"KQDQ", u32 type id, u32 n_blocks, u32 bytes per block, u32 elements per block,
    n_blocks * bytes   raw block bytes,
    n_blocks * elems   expected f32 (little-endian) from gguf.quants.dequantize.
Blocks are random bytes with every f16 scale field replaced by a random finite f16 (normal,
subnormal, zero, negative; full range); for F32/F16/BF16 non-finite patterns are made finite.
Q8_K: gguf 0.19.0 has no Q8_K dequantizer, so its expected values are computed here with NumPy
as f32(d) * f32(q) (one f32 multiply, the whole formula), with random finite f32 `d`.

Quantization fixture `quant_Q8_0.bin`:
    b"KQQ8", u32 n_blocks, n_blocks * 32 f32 inputs, n_blocks * 34 expected bytes from
    gguf.quants.quantize(x, Q8_0). Inputs: N(0,1)·e^U(-8,8) blocks, blocks of exact .5 ties,
    an all-zero block, one nonzero element, tiny (f16 d underflows) and huge (f16 d overflows).

A manifest (`quant_fixtures.txt`) lists the files, block counts and sources.
"""

import hashlib
import importlib.metadata
import pathlib
import struct
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

SEED = 20261121
OUT = pathlib.Path(__file__).resolve().parent.parent / "crates" / "gguf" / "tests" / "fixtures"

# type -> (elements per block, bytes per block, byte offsets of f16 scale fields, n_blocks)
LEGACY_BLOCKS = 256
K_BLOCKS = 64
FLOAT_ELEMS = 4096
TYPES = {
    T.F32: (1, 4, [], FLOAT_ELEMS),
    T.F16: (1, 2, [], FLOAT_ELEMS),
    T.BF16: (1, 2, [], FLOAT_ELEMS),
    T.Q4_0: (32, 18, [0], LEGACY_BLOCKS),
    T.Q4_1: (32, 20, [0, 2], LEGACY_BLOCKS),
    T.Q5_0: (32, 22, [0], LEGACY_BLOCKS),
    T.Q5_1: (32, 24, [0, 2], LEGACY_BLOCKS),
    T.Q8_0: (32, 34, [0], LEGACY_BLOCKS),
    T.Q2_K: (256, 84, [80, 82], K_BLOCKS),
    T.Q3_K: (256, 110, [108], K_BLOCKS),
    T.Q4_K: (256, 144, [0, 2], K_BLOCKS),
    T.Q5_K: (256, 176, [0, 2], K_BLOCKS),
    T.Q6_K: (256, 210, [208], K_BLOCKS),
    T.Q8_K: (256, 292, [], K_BLOCKS),
}


def finite_f16_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random finite f16 bit patterns: mostly uniform over all finite patterns (so every exponent,
    both signs), with extra subnormals and signed zeros mixed in."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint32)
    kind = rng.random(n)
    sub = kind < 0.15  # subnormal: exponent 0, random mantissa and sign
    bits = np.where(sub, bits & 0x83FF, bits)
    zero = (kind >= 0.15) & (kind < 0.18)
    bits = np.where(zero, bits & 0x8000, bits)
    # Exponent all ones (inf/NaN) -> clear its top bit: finite, same sign and mantissa.
    bits = np.where((bits & 0x7C00) == 0x7C00, bits & ~np.uint32(0x4000), bits)
    return bits.astype(np.uint16)


def finite_f32_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    bits = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    return np.where((bits & 0x7F800000) == 0x7F800000, bits & ~np.uint32(0x40000000), bits).astype(
        np.uint32
    )


def make_blocks(rng: np.random.Generator, ty: T) -> np.ndarray:
    blk, size, f16_fields, n = TYPES[ty]
    if ty == T.F32:
        return finite_f32_bits(rng, n).view(np.uint8)
    if ty in (T.F16, T.BF16):
        bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint32)
        expo = 0x7C00 if ty == T.F16 else 0x7F80
        bits = np.where((bits & expo) == expo, bits & ~np.uint32(0x4000), bits)
        return bits.astype(np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for off in f16_fields:
        raw[:, off : off + 2] = finite_f16_bits(rng, n).view(np.uint8).reshape(n, 2)
    if ty == T.Q8_K:
        # Half full-range finite f32 (products may overflow to inf, which is still exact f32),
        # half in the range real activations give (|d| in 2^-40 .. 2^8, either sign).
        d = finite_f32_bits(rng, n).view(np.float32)
        real = (rng.choice([-1.0, 1.0], size=n) * 2.0 ** rng.uniform(-40, 8, size=n)).astype(np.float32)
        d = np.where(np.arange(n) % 2 == 0, real, d).astype(np.float32)
        raw[:, 0:4] = d.view(np.uint8).reshape(n, 4)
    return raw.reshape(-1)


def expected(ty: T, raw: np.ndarray) -> tuple[np.ndarray, str]:
    if ty == T.Q8_K:
        blocks = raw.reshape(-1, 292)
        d = blocks[:, 0:4].copy().view(np.float32)  # (n, 1)
        q = blocks[:, 4:260].view(np.int8).astype(np.float32)
        with np.errstate(over="ignore"):
            out = (d * q).astype(np.float32)
        return out.reshape(-1), "numpy f32(d)*f32(q) (gguf has no Q8_K)"
    out = gguf.quants.dequantize(raw, ty)
    return np.ascontiguousarray(out, dtype=np.float32).reshape(-1), "gguf.quants.dequantize"


def q8_0_inputs(rng: np.random.Generator) -> np.ndarray:
    blocks = []
    for _ in range(48):
        blocks.append(rng.standard_normal(32) * np.exp(rng.uniform(-8, 8)))
    # Exact ties: amax = 127·2^k makes d = 2^k and 1/d exact, so (n + 0.5)·2^k is a tie.
    for k in (0, -3, 2, -10, 5):
        b = (rng.integers(-126, 126, size=32) + 0.5) * 2.0**k
        b[rng.integers(0, 32)] = 127 * 2.0**k * rng.choice([-1, 1])
        blocks.append(b)
    blocks.append(np.zeros(32))
    one = np.zeros(32)
    one[17] = -3.25
    blocks.append(one)
    blocks.append(rng.standard_normal(32) * 1e-30)  # f16(d) underflows to zero
    blocks.append(rng.standard_normal(32) * 1e-6)  # f16(d) subnormal
    blocks.append(rng.standard_normal(32) * 3e6)  # f16(d) overflows to inf
    mixed = rng.standard_normal(32)
    mixed[::3] = 0.0
    blocks.append(mixed)
    return np.concatenate(blocks).astype(np.float32)


def main() -> int:
    version = importlib.metadata.version("gguf")
    if version != "0.19.0":
        print(f"need gguf 0.19.0, found {version}", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    manifest = [f"# made by tools/gen_quant_fixtures.py, seed {SEED}, gguf {version}, numpy {np.__version__}"]
    total = 0
    for ty in TYPES:
        blk, size, _, _ = TYPES[ty]
        raw = make_blocks(rng, ty)
        n_blocks = raw.size // size
        exp, source = expected(ty, raw)
        assert exp.size == n_blocks * blk, (ty, exp.size)
        data = b"KQDQ" + struct.pack("<4I", ty.value, n_blocks, size, blk)
        data += raw.tobytes() + exp.astype("<f4").tobytes()
        name = f"dequant_{ty.name}.bin"
        (OUT / name).write_bytes(data)
        total += len(data)
        sha = hashlib.sha256(data).hexdigest()[:16]
        manifest.append(f"{name}\t{ty.name}\t{n_blocks} blocks\t{source}\tsha256:{sha}")

    x = q8_0_inputs(rng)
    with np.errstate(over="ignore"):  # the huge block's f16 d overflows to inf on purpose
        q = gguf.quants.quantize(x, T.Q8_0)
    n_blocks = x.size // 32
    assert q.size == n_blocks * 34
    data = b"KQQ8" + struct.pack("<I", n_blocks) + x.astype("<f4").tobytes() + q.tobytes()
    (OUT / "quant_Q8_0.bin").write_bytes(data)
    total += len(data)
    sha = hashlib.sha256(data).hexdigest()[:16]
    manifest.append(f"quant_Q8_0.bin\tQ8_0\t{n_blocks} blocks\tgguf.quants.quantize\tsha256:{sha}")
    (OUT / "quant_fixtures.txt").write_text("\n".join(manifest) + "\n")
    print("\n".join(manifest))
    print(f"{total} bytes in {len(TYPES) + 1} files under {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
