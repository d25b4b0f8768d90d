#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_gguf into tests/fuzz/corpus_gguf/:
a small valid image (every metadata value type, an array of strings, F32 and
Q8_0 tensors), damaged variants of it, and the header of a real fixture
(tests/data/gguf/qwen2moe-q4_k_m/model.gguf, cut after its tensor infos).
Usage: gen_corpus_gguf.py [repo root]."""
import os, struct, sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
out = os.path.join(root, "tests", "fuzz", "corpus_gguf")
os.makedirs(out, exist_ok=True)

def s(x): b = x.encode(); return struct.pack("<Q", len(b)) + b
def kv(key, t, payload): return s(key) + struct.pack("<I", t) + payload

def image(tensors=None, extra_kv=b"", n_kv_extra=0, version=3):
    kvs = [kv("general.architecture", 8, s("qwen3moe")),
           kv("general.alignment", 4, struct.pack("<I", 32)),
           kv("u8", 0, b"\x07"), kv("i8", 1, b"\xff"), kv("u16", 2, b"\x01\x02"),
           kv("i16", 3, b"\xff\xff"), kv("i32", 5, struct.pack("<i", -5)),
           kv("f32", 6, struct.pack("<f", 1e-6)), kv("bool", 7, b"\x01"),
           kv("u64", 10, struct.pack("<Q", 1 << 40)), kv("i64", 11, struct.pack("<q", -1)),
           kv("f64", 12, struct.pack("<d", 1e6)),
           kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2) + s("hi") + s("there")),
           kv("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 2) + struct.pack("<ff", 0.5, -1))]
    if tensors is None:
        tensors = [("a", [4, 2], 0, 0), ("b", [32, 1], 8, 32)]
    hdr = struct.pack("<IIQQ", 0x46554747, version, len(tensors), len(kvs) + n_kv_extra)
    body = b"".join(kvs) + extra_kv
    for name, ne, t, off in tensors:
        body += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        body += struct.pack("<IQ", t, off)
    img = hdr + body
    img += b"\0" * (-len(img) % 32)
    return img + b"\0" * 66

seeds = {
    "valid-small": image(),
    "valid-no-tensors": image(tensors=[]),
    "valid-v2": image(version=2),
    "bad-magic": b"GGUX" + image()[4:],
    "bad-version": image(version=1),
    "bad-kv-count": image(n_kv_extra=1 << 40),
    "bad-nested-array": image(extra_kv=kv("x", 9, struct.pack("<IQ", 9, 1)), n_kv_extra=1),
    "bad-type": image(tensors=[("a", [4, 2], 99, 0)]),
    "bad-misaligned": image(tensors=[("a", [4, 2], 0, 0), ("b", [32, 1], 8, 33)]),
    "bad-overlap": image(tensors=[("a", [4, 2], 0, 0), ("b", [32, 1], 8, 0)]),
    "bad-outside": image(tensors=[("a", [4, 2], 0, 0), ("b", [32, 1], 8, 1 << 20)]),
    "bad-dims": image(tensors=[("a", [1 << 40, 1 << 40], 0, 0)]),
    "bad-blocks": image(tensors=[("a", [4, 2], 12, 0)]),
    "bad-dup": image(tensors=[("a", [4, 2], 0, 0), ("a", [4, 2], 0, 32)]),
}
real = os.path.join(root, "tests", "data", "gguf", "qwen2moe-q4_k_m", "model.gguf")
if os.path.exists(real):
    with open(real, "rb") as f:
        data = f.read(1 << 16)
    # Cut right after the tensor infos: the header parses, the data is absent.
    seeds["real-qwen2moe-header"] = data[:12000]
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {out}")
