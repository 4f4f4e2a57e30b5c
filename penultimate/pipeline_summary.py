"""The pipeline's closing summary: every stage's artifact with its headline numbers, as markdown
(published as a Prefect artifact and printed by `penultimate pipeline`).
"""

from __future__ import annotations

from collections.abc import Mapping

from penultimate.artifacts import ArtifactRef, ArtifactStore


def headline(stage: str, metrics: Mapping) -> str:
    """The one line of numbers that matters for each stage."""
    if stage == "dataset":
        return f"{metrics.get('rows')} rows; per split {metrics.get('rows_per_split')}"
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
        return f"{metrics.get('rows')} vectors of dim {metrics.get('dim')}{reused}"
    if stage == "clusters":
        numbers = ("silhouette", "ari", "nmi", "purity")
        scores = ", ".join(f"{n} {metrics[n]:.3f}" for n in numbers if n in metrics)
        return f"{metrics.get('clusters')} clusters; {scores}"
    if stage == "probe" and "best" in metrics:
        return f"best {metrics['best']} (test accuracy {metrics['best_accuracy']:.3f})"
    return ""


def pipeline_markdown(refs: Mapping[str, ArtifactRef], store: ArtifactStore, ui_url: str) -> str:
    """Markdown linking each stage's artifact folder and its headline metrics."""
    lines = ["# Pipeline run", "", "| stage | artifact | headline |", "| --- | --- | --- |"]
    for stage, ref in refs.items():
        manifest = store.read_manifest(ref)
        metrics = manifest.metrics if manifest else {}
        lines.append(
            f"| {stage} | [`{ref.key}`](file://{ref.uri}) | {headline(ref.stage, metrics)} |"
        )
    clusters = refs.get("cluster")
    if clusters is not None:
        lines += ["", "Outputs:", ""]
        lines += [
            f"- {name}: `{clusters.path / name}`"
            for name in ("report.md", "map_by_cluster.png", "map_by_label.png", "map.html",
                         "projector")
            if (clusters.path / name).exists()
        ]  # fmt: skip
    if ui_url:
        lines += ["", f"Prefect UI: {ui_url}"]
    return "\n".join(lines) + "\n"
