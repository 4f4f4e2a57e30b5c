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

import penultimate  # noqa: F401  (selects tf-keras before TensorFlow loads)
from benchmarks.results import write_section
from penultimate.artifacts import ArtifactStore
from penultimate.config import PipelineConfig, ProbeConfig, load_config
from penultimate.embed import peak_memory_mb
from penultimate.prefect_server import start_local_server, stop_local_server

DEMO = Path("configs/demo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="artifacts", help="artifact store (make demo's)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-probe-server-"))
    api_url = start_local_server(home)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import pipeline
    from flows.probe import probe

    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            started = time.perf_counter()
            refs = pipeline(config=load_config(PipelineConfig, DEMO / "pipeline.yaml"),
                            store_root=args.store)  # fmt: skip
            pipeline_seconds = time.perf_counter() - started
            demo_probe = load_config(ProbeConfig, DEMO / "probe.yaml")
            config = demo_probe.model_copy(update={"export": refs["export"].uri})
            started = time.perf_counter()
            ref = probe(config=config, store_root=args.store)
            probe_seconds = time.perf_counter() - started
    finally:
        stop_local_server(home)
    metrics = ArtifactStore(args.store).read_manifest(ref).metrics  # type: ignore[union-attr]
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
    ]
    write_section("Probe: which embedding should I take?", lines, "make bench-probe")


if __name__ == "__main__":
    main()
