"""The pipeline's closing summary: per stage its artifact, computed or cached, seconds and headline
numbers; as markdown with plots and links for the Prefect UI, and as plain lines for a terminal.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.shard_features import long_text_summary
from penultimate.ui import file_url, inline_png

# The plots the summary shows inline, by pipeline stage.
SUMMARY_PLOTS = {"train": ["confusion_matrix.png"], "cluster": ["map_by_label.png"]}
# Each stage's own Prefect report, linked from the summary (this run's version where it has one).
STAGE_REPORTS = {
    "ingest": "dataset-summary",
    "train": "classifier-report",
    "embed": "embed-progress",
    "cluster": "cluster-report",
}


class StageRun(BaseModel):
    """One stage of a pipeline run: its artifact, whether this run made it, and the seconds the
    stage took in this run (a cached stage's check included)."""

    artifact: ArtifactRef
    computed: bool
    seconds: float


class PipelineRun(BaseModel):
    """What `pipeline` returns: every stage's run, in pipeline order (ingest ... cluster)."""

    stages: dict[str, StageRun]

    def artifact(self, stage: str) -> ArtifactRef:
        return self.stages[stage].artifact


def headline(stage: str, metrics: Mapping) -> str:
    """The one line of numbers that matters for each artifact stage."""
    if stage == "dataset":
        splits = ", ".join(f"{n} {s}" for s, n in (metrics.get("rows_per_split") or {}).items())
        return f"{metrics.get('rows')} rows ({splits})"
    if stage == "encoder":
        return (
            f"{metrics.get('num_layers')} layers, hidden size {metrics.get('hidden_size')}, "
            f"seq_length {metrics.get('seq_length')}"
        )
    if stage == "features":
        choices = metrics.get("choices") or []
        return (
            f"{metrics.get('rows')} rows x {len(choices)} vectors, "
            f"{metrics.get('encoded_texts')} texts through the encoder"
        )
    if stage == "classifier":
        test = metrics.get("test") or {}
        numbers = ("accuracy", "f1", "roc_auc")
        return "test " + ", ".join(f"{n} {test[n]:.4f}" for n in numbers if test.get(n) is not None)
    if stage == "export":
        diffs = (metrics.get("max_abs_diff") or {}).values()
        return f"reloaded in a fresh process, max abs diff {max(diffs, default=float('nan')):.1e}"
    if stage == "embedding-shard":
        return f"{metrics.get('rows')} vectors of dim {metrics.get('dim')}"
    if stage == "embeddings":
        reused = "" if metrics.get("encoded_texts") else " (from cached features, no encoder pass)"
        long = (
            f"; {long_text_summary(metrics)}"
            if metrics.get("truncated", 0) or metrics.get("chunked")
            else ""
        )
        return f"{metrics.get('rows')} vectors of dim {metrics.get('dim')}{reused}{long}"
    if stage == "clusters":
        numbers = ("silhouette", "ari", "nmi", "purity")
        scores = ", ".join(f"{n} {metrics[n]:.3f}" for n in numbers if n in metrics)
        return f"{metrics.get('clusters')} clusters; {scores}"
    if stage == "probe" and "best" in metrics:
        return f"best {metrics['best']} (test accuracy {metrics['best_accuracy']:.3f})"
    return ""


def _how(run: StageRun) -> str:
    return f"{'computed' if run.computed else 'cached'} in {run.seconds:.1f} s"


def pipeline_markdown(
    run: PipelineRun, store: ArtifactStore, report_links: Mapping[str, str]
) -> str:
    """The Prefect UI's summary: a line per stage with its headline, linking its files and its
    report (`report_links`: report key -> URL; a report without one is left out), then the key
    plots inline."""
    # A list, not a table: the UI renders table cells unwrapped, so long headlines ran off the
    # right edge of the artifact pane; list items wrap at any width.
    lines = ["# Pipeline run", ""]
    plots: list[str] = []
    for stage, stage_run in run.stages.items():
        ref = stage_run.artifact
        manifest = store.read_manifest(ref)
        metrics = manifest.metrics if manifest else {}
        numbers = headline(ref.stage, metrics)
        report = STAGE_REPORTS.get(stage)
        links = [f"files [`{ref.key[:12]}`]({file_url(store.root, ref.path)})"]
        if report in report_links:
            links.append(f"report [{report}]({report_links[report]})")
        lines.append(
            f"- **{stage}**: {_how(stage_run)}"
            + (f"; {numbers}" if numbers else "")
            + f" ({', '.join(links)})"
        )
        plots += [
            inline_png(ref.path / name, f"{stage}: {name}", store.root)
            for name in SUMMARY_PLOTS.get(stage, [])
            if (ref.path / name).exists()
        ]
    clusters = run.stages.get("cluster")
    if clusters is not None:
        folder = clusters.artifact.path
        lines += ["", "Outputs:"]
        lines += [
            f"[{name}]({file_url(store.root, folder / name)})"
            for name in ("report.md", "map.html", "projector")
            if (folder / name).exists()
        ]
    lines += ["", *plots]
    lines += ["", f"Files are served by `penultimate serve` (store `{store.root}`)."]
    return "\n".join(lines) + "\n"


def pipeline_text(run: PipelineRun, store: ArtifactStore) -> str:
    """The terminal's summary: a line per stage, then where the outputs are."""
    lines = []
    for stage, stage_run in run.stages.items():
        manifest = store.read_manifest(stage_run.artifact)
        metrics = manifest.metrics if manifest else {}
        lines.append(
            f"{stage:<8} {_how(stage_run):<22} {headline(stage_run.artifact.stage, metrics)}"
        )
    clusters = run.stages.get("cluster")
    if clusters is not None:
        folder = Path(clusters.artifact.path)
        outputs = [
            n for n in ("report.md", "map.html", "map_by_label.png") if (folder / n).exists()
        ]
        lines += ["", f"outputs in {folder}: {', '.join(outputs)}"]
    return "\n".join(lines)
