"""What a fresh process pays before its first result, side by side with what it paid before:
(1) the built-in preprocessor SavedModel, saved with 4 traced `bert_pack_inputs` forms (a Python
int default for `seq_length`) beside the 8 it had (each form also without `seq_length`), then
loaded; (2) a UMAP map as `penultimate cluster` makes it, umap-learn imported plainly (it
compiles its numba functions anew in every process) beside `import_umap_with_numba_cache`.
Every run is its own process. Writes a benchmarks/RESULTS.md section.

Run with `make bench-startup` (part of `make bench`); takes ~2.5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import penultimate  # noqa: F401  (selects tf-keras before TensorFlow loads)
from benchmarks.results import write_section

UMAP_POINTS = 2_000
DIM = 384
REPEATS = 3


def run_preprocessor(extra_forms: bool) -> None:
    """Save the built-in preprocessor (with the 4 forms it no longer traces if `extra_forms`),
    load it and pack one text; print the seconds of each step as JSON."""
    import tensorflow as tf

    from penultimate.encoders.preprocessor import BertPreprocessor
    from penultimate.encoders.sources import resolve_weights_folder

    started = time.perf_counter()
    preprocessor = BertPreprocessor(resolve_weights_folder("minilm-l6") / "vocab.txt", 128)
    preprocessor._trace_for_export()
    if extra_forms:
        for ragged_rank in (2, 1):
            tokens = tf.RaggedTensorSpec([None] * (ragged_rank + 1), tf.int32, ragged_rank)
            for count in (1, 2):
                preprocessor.bert_pack_inputs.get_concrete_function([tokens] * count)
    traced = time.perf_counter()
    folder = tempfile.mkdtemp(prefix="bench-startup-")
    tf.saved_model.save(preprocessor, folder, signatures={"serving_default": preprocessor.__call__})
    saved = time.perf_counter()
    loaded = tf.saved_model.load(folder)
    tokens = loaded.tokenize(tf.constant(["a first text"]))
    loaded.bert_pack_inputs([tokens], seq_length=16)
    done = time.perf_counter()
    print(json.dumps({"trace": traced - started, "save": saved - traced, "load": done - saved}))


def run_umap(cached: bool) -> None:
    """Import umap and fit a 2-D map as the cluster stage does; print the seconds as JSON."""
    import numpy as np

    from penultimate.cluster import import_umap_with_numba_cache

    started = time.perf_counter()
    if cached:
        umap = import_umap_with_numba_cache()
    else:
        import umap
    imported = time.perf_counter()
    # Compile time does not depend on the values: random unit vectors stand in for embeddings.
    points = np.random.default_rng(0).normal(size=(UMAP_POINTS, DIM)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    umap.UMAP(n_components=2, random_state=0, n_jobs=1).fit(points)
    done = time.perf_counter()
    print(json.dumps({"import": imported - started, "fit": done - imported}))


def measure(kind: str, flag: bool, env: dict[str, str] | None = None) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_startup", "--run-one", kind, str(int(flag))],
        check=True, capture_output=True, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip
    info = json.loads(result.stdout.strip().splitlines()[-1])
    print(kind, flag, info, flush=True)
    return info


def preprocessor_rows() -> list[str]:
    rows = []
    for _ in range(REPEATS):  # alternating, so drift in the machine's speed hits both alike
        for name, extra in (("8 forms (before)", True), ("4 forms (now)", False)):
            info = measure("preprocessor", extra)
            rows.append(
                f"| {name} | {info['trace']:.2f} | {info['save']:.2f} | {info['load']:.2f} |"
            )
    return rows


def umap_rows() -> list[str]:
    # A fresh numba cache: the first process compiles what pynndescent caches itself, too.
    env = {"NUMBA_CACHE_DIR": tempfile.mkdtemp(prefix="bench-startup-numba-")}
    runs = [
        ("plain `import umap`, empty numba cache", False),
        ("with the cache, first process (compiles, writes)", True),
        ("with the cache, next process", True),
        ("with the cache, next process", True),
        ("plain `import umap`, again", False),
    ]
    rows = []
    for name, cached in runs:
        info = measure("umap", cached, env)
        rows.append(
            f"| {name} | {info['import']:.1f} | {info['fit']:.1f} | "
            f"{info['import'] + info['fit']:.1f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        kind, flag = args.run_one
        (run_preprocessor if kind == "preprocessor" else run_umap)(flag == "1")
        return
    write_section(
        "Fresh-process start-up: preprocessor SavedModel and UMAP's numba cache",
        [
            "The built-in preprocessor (30,522-token vocabulary, seq_length 128) traced, saved "
            "and loaded (load includes packing one text), each run in its own process, "
            "alternating:",
            "",
            "| bert_pack_inputs | trace (s) | save (s) | load (s) |",
            "| --- | --- | --- | --- |",
            *preprocessor_rows(),
            "",
            f"A 2-D UMAP fit on {UMAP_POINTS:,} points of dimension {DIM}, each run in its own "
            "process, in this order, sharing one numba cache folder that starts empty:",
            "",
            "| run | import (s) | fit (s) | total (s) |",
            "| --- | --- | --- | --- |",
            *umap_rows(),
        ],
        "make bench-startup",
    )


if __name__ == "__main__":
    main()
