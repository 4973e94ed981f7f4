"""Dequantizes raw ggml blocks with llama.cpp's own Python package (gguf-py), for comparison
with seam's decoder: dequantize.py TYPE IN OUT reads the blocks of TYPE (e.g. Q4_K) from IN
and writes the values to OUT as little-endian float32; prints {"values": n}."""

import json
import sys

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize


def main() -> None:
    name, src, dst = sys.argv[1:4]
    qtype = GGMLQuantizationType[name]
    data = np.fromfile(src, dtype=np.uint8)
    values = dequantize(data, qtype).astype("<f4").reshape(-1)
    values.tofile(dst)
    print(json.dumps({"values": int(values.size)}))


if __name__ == "__main__":
    main()
