"""sentence-transformers `all-MiniLM-L6-v2` on torch CPU over the benchmark's texts, for
`bench_embed.py`; runs in its own torch environment (never .venv), so it imports no project code.

Usage: python st_reference.py MODEL_DIR TEXTS_JSON OUT_NPY THREADS BATCH_SIZE MAX_LENGTH
Prints one JSON line: texts, seconds (encode only), texts_per_s, peak_rss_mb, versions.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"  # the weights are on disk; never touch a hub

import numpy as np
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer


def peak_memory_mb() -> float:
    # VmHWM starts afresh at exec; ru_maxrss would report the forking parent's peak.
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def main() -> None:
    model_dir, texts_json, out_npy, threads, batch_size, max_length = sys.argv[1:7]
    torch.set_num_threads(int(threads))
    with open(texts_json, encoding="utf-8") as handle:
        texts = json.load(handle)
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = int(max_length)
    model.encode(texts[:64], batch_size=int(batch_size))  # warm-up, as for the TF runs
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=int(batch_size), normalize_embeddings=True)
    seconds = time.perf_counter() - started
    np.save(out_npy, vectors.astype(np.float32))
    print(
        json.dumps(
            {
                "texts": len(texts),
                "seconds": seconds,
                "texts_per_s": len(texts) / seconds,
                "peak_rss_mb": peak_memory_mb(),
                "torch": torch.__version__,
                "sentence_transformers": sentence_transformers.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
