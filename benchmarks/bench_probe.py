"""Which embedding on the demo corpus: the probe flow over every layer x pooling of the demo
pipeline's classifier (its penultimate features are a row too), timed; writes a RESULTS.md section.

Run with `make bench-probe` (part of `make bench`); reuses `make demo`'s artifacts when present.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import penultimate  # noqa: F401  (selects tf-keras before TensorFlow loads)
from benchmarks.results import write_section
from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.cluster import EmbeddingShards
from penultimate.config import PipelineConfig, ProbeConfig, load_config
from penultimate.embed import peak_memory_mb
from penultimate.prefect_server import start_local_server, stop_local_server
from penultimate.probe import ProbeRows, parse_choices, read_probe_rows, score_choice

DEMO = Path("configs/demo")


def before_and_after_dropout(
    store: ArtifactStore, probe_ref: ArtifactRef, config: ProbeConfig, rate: float
) -> list[str]:
    """The penultimate features as served (before dropout) vs with a training-mode element
    dropout mask of `rate` applied (kept values scaled by 1/(1-rate), as Keras does): probe and
    k-means scores, and how far each vector moves (cosine)."""
    stored = next(i for i in store.read_manifest(probe_ref).inputs if i.stage == "embeddings")
    embeddings = store.resolve(stored)
    blocks = store.read_manifest(embeddings).metrics["choice_blocks"]  # type: ignore[union-attr]
    block = next(c for c in parse_choices(blocks) if c.name == "penultimate")
    rows = read_probe_rows(EmbeddingShards.open(embeddings), 20000, 20000, config.seed)
    columns = slice(block.start, block.start + block.dim)
    train, test = rows.train_vectors[:, columns], rows.test_vectors[:, columns]
    rng = np.random.default_rng(config.seed)

    def dropped(x: np.ndarray) -> np.ndarray:
        return x * (rng.random(x.shape) >= rate) / (1 - rate)

    after = ProbeRows(rows.label_names, rows.train_labels, dropped(train), rows.test_labels,
                      dropped(test))  # fmt: skip
    before = ProbeRows(rows.label_names, rows.train_labels, train, rows.test_labels, test)
    whole = slice(0, block.dim)
    scores = {
        name: score_choice(r, whole, config.regularization, config.cluster_rows, config.seed)
        for name, r in (("before dropout (what penultimate serves)", before),
                        (f"after element dropout {rate} (training mode)", after))
    }  # fmt: skip
    cosine = np.sum(test * after.test_vectors, axis=1) / (
        np.linalg.norm(test, axis=1) * np.linalg.norm(after.test_vectors, axis=1) + 1e-12
    )
    lines = [
        f"Before or after dropout? The demo classifier's {block.dim}-d penultimate features, "
        f"as served and with its own dropout (hidden:0, element, rate {rate}) applied as in "
        f"training; cosine(before, after) on the test mails: mean {cosine.mean():.3f}, "
        f"min {cosine.min():.3f}.",
        "",
        "| features | probe accuracy | macro F1 | ARI | NMI |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, score in scores.items():
        lines.append(
            f"| {name} | {score['accuracy']:.3f} | {score['macro_f1']:.3f} | "
            f"{score['ari']:.3f} | {score['nmi']:.3f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="artifacts", help="artifact store (make demo's)")
    args = parser.parse_args()
    demo = load_config(PipelineConfig, DEMO / "pipeline.yaml")
    home = Path(tempfile.mkdtemp(prefix="bench-probe-server-"))
    api_url = start_local_server(home)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import pipeline
    from flows.probe import probe

    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            started = time.perf_counter()
            run = pipeline(config=demo, store_root=args.store)
            pipeline_seconds = time.perf_counter() - started
            demo_probe = load_config(ProbeConfig, DEMO / "probe.yaml")
            config = demo_probe.model_copy(update={"export": run.artifact("export").uri})
            started = time.perf_counter()
            ref = probe(config=config, store_root=args.store)
            probe_seconds = time.perf_counter() - started
    finally:
        stop_local_server(home)
    store = ArtifactStore(args.store)
    metrics = store.read_manifest(ref).metrics  # type: ignore[union-attr]
    lines = [
        f"The demo pipeline (`configs/demo/pipeline.yaml`; {pipeline_seconds:.0f} s, cached when "
        "`make demo` ran before), then `penultimate probe` with `configs/demo/probe.yaml` and "
        f"its export: {metrics['rows']['train']} train and {metrics['rows']['test']} test mails, "
        f"{metrics['choices']} choices, **{probe_seconds / 60:.1f} min** on 2 Dask workers "
        f"(this process's peak memory {peak_memory_mb()} MB). Probe artifact: `{ref.uri}`.",
        "",
        (ref.path / "report.md").read_text().split("\n", 2)[2].strip(),
        "",
        f"Recommendation as JSON: `{json.dumps({k: metrics[k] for k in sorted(metrics)})}`",
        "",
        *before_and_after_dropout(store, ref, config, demo.train.dropout[0].rate),
        "",
    ]
    write_section("Probe: which embedding should I take?", lines, "make bench-probe")


if __name__ == "__main__":
    main()
