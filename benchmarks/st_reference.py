"""sentence-transformers `all-MiniLM-L6-v2` over the benchmark's texts, for `bench_embed.py`, on one
backend: `torch` (fp32), `onnx` (fp32, ONNX Runtime), `onnx-int8` (ONNX Runtime, optimum's dynamic
int8 quantisation for AVX2) or `openvino` (its default precision on this CPU). Runs in its own
environment (never .venv), so it imports no project code.

Usage:
    python st_reference.py MODEL_DIR TEXTS_JSON OUT_NPY [--threads N] [--batch-size N]
        [--max-length N] [--backend NAME] [--export-dir DIR]
    python st_reference.py MODEL_DIR --prepare --backend NAME --export-dir DIR

Prints one JSON line: texts, seconds (encode only), texts_per_s, fixed_batch_ms (one batch of
`batch size` one-token texts), peak_rss_mb, versions and, for OpenVINO, the precision it ran.
`--prepare` exports (and quantises) the local weights once into DIR, offline, so the timed runs
only load; exporting is not part of any timing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # the weights are on disk; never touch a hub
os.environ.setdefault("OPENVINO_TELEMETRY_DISABLED", "1")  # no network calls from a benchmark

import numpy as np
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")
INT8_FILE = "onnx/model_quint8_avx2.onnx"  # what export_dynamic_quantized_onnx_model writes
FIXED_BATCH_REPEATS = 20


def peak_memory_mb() -> float:
    # VmHWM starts afresh at exec; ru_maxrss would report the forking parent's peak.
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def backend_kwargs(backend: str, threads: int) -> dict[str, Any]:
    """SentenceTransformer keyword arguments that run `backend` on `threads` threads (torch's
    thread setting does not reach ONNX Runtime or OpenVINO)."""
    if backend == "torch":
        return {}
    if backend == "openvino":
        return {
            "backend": "openvino",
            "model_kwargs": {"ov_config": {"INFERENCE_NUM_THREADS": threads}},
        }
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    model_kwargs: dict[str, Any] = {"session_options": options, "provider": "CPUExecutionProvider"}
    if backend == "onnx-int8":
        model_kwargs["file_name"] = INT8_FILE
    return {"backend": "onnx", "model_kwargs": model_kwargs}


def prepare(model_dir: str, backend: str, export_dir: Path) -> None:
    """Export the local weights for `backend` into `export_dir` (a full model folder with the
    exported graph), unless a previous run already did. Loading from the installed weights and
    saving elsewhere leaves the weights package untouched."""
    export_dir = export_dir.resolve()  # a relative path would be read as a hub model name
    marker = export_dir / f".prepared-{backend}"
    if marker.exists():
        return
    if backend in ("onnx", "onnx-int8"):
        if not (export_dir / "onnx" / "model.onnx").exists():
            exported = SentenceTransformer(model_dir, device="cpu", backend="onnx")
            exported.save_pretrained(str(export_dir))  # writes onnx/model.onnx
        if backend == "onnx-int8":
            from sentence_transformers import export_dynamic_quantized_onnx_model

            model = SentenceTransformer(str(export_dir), device="cpu", backend="onnx")
            # Dynamic quantisation needs no calibration data, so it works offline; this CPU has
            # AVX2 and no AVX-512, hence the avx2 configuration.
            export_dynamic_quantized_onnx_model(model, "avx2", str(export_dir))
    elif backend == "openvino":
        exported = SentenceTransformer(model_dir, device="cpu", backend="openvino")
        exported.save_pretrained(str(export_dir))  # writes openvino/openvino_model.xml
    marker.touch()


def openvino_precision(model: SentenceTransformer) -> str | None:
    """The precision OpenVINO's compiled model actually runs (INFERENCE_PRECISION_HINT)."""
    # optimum-intel keeps the `ov.CompiledModel` as `request` (an InferRequest in old versions).
    compiled = model[0].auto_model.request
    if hasattr(compiled, "get_compiled_model"):
        compiled = compiled.get_compiled_model()
    if not hasattr(compiled, "get_property"):
        return None
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def versions(backend: str) -> dict[str, str]:
    found = {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__}
    if backend.startswith("onnx"):
        import onnxruntime

        found["onnxruntime"] = onnxruntime.__version__
    if backend == "openvino":
        import openvino

        found["openvino"] = openvino.__version__
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir")
    parser.add_argument("texts_json", nargs="?")
    parser.add_argument("out_npy", nargs="?")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--export-dir", type=Path, help="the exported model (not torch)")
    parser.add_argument("--prepare", action="store_true", help="export only, then exit")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.backend != "torch" and args.export_dir is None:
        parser.error(f"--backend {args.backend} needs --export-dir")
    if args.prepare:
        if args.backend != "torch":
            prepare(args.model_dir, args.backend, args.export_dir)
        return
    if args.texts_json is None or args.out_npy is None:
        parser.error("TEXTS_JSON and OUT_NPY are required unless --prepare")

    with open(args.texts_json, encoding="utf-8") as handle:
        texts = json.load(handle)
    source = args.model_dir if args.backend == "torch" else str(args.export_dir.resolve())
    model = SentenceTransformer(source, device="cpu", **backend_kwargs(args.backend, args.threads))
    model.max_seq_length = args.max_length
    batch_size = args.batch_size
    model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up, as for the TF runs
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
    seconds = time.perf_counter() - started
    # Fixed cost per batch: a batch of one-token texts is all dispatch, tokenisation and
    # pooling, hardly any arithmetic. Best of several calls, after one warm-up call.
    ones = ["a"] * batch_size
    model.encode(ones, batch_size=batch_size)
    fixed = []
    for _ in range(FIXED_BATCH_REPEATS):
        tick = time.perf_counter()
        model.encode(ones, batch_size=batch_size)
        fixed.append(time.perf_counter() - tick)
    np.save(args.out_npy, vectors.astype(np.float32))
    result: dict[str, Any] = {
        "backend": args.backend,
        "texts": len(texts),
        "seconds": seconds,
        "texts_per_s": len(texts) / seconds,
        "fixed_batch_ms": 1000 * min(fixed),
        "peak_rss_mb": peak_memory_mb(),
        **versions(args.backend),
    }
    if args.backend == "openvino":
        result["openvino_precision"] = openvino_precision(model)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
