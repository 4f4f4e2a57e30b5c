"""The probe artifact's files: the scores table (CSV and JSON), a layer x pooling heatmap, probe
accuracy by layer per pooling, and a markdown report with the recommendation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on workers or servers

import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from penultimate.cluster import EmbeddingShards
from penultimate.config import ProbeConfig
from penultimate.probe import (
    chance_accuracy,
    parse_choices,
    probe_table,
    read_probe_rows,
    recommend,
)

TOKEN_POOLING_ROWS = ("cls", "mean", "max")


def plot_heatmap(table: pl.DataFrame, score: str, path: Path) -> None:
    """Token poolings (rows) x layers (columns), each cell the choice's `score`."""
    layered = table.filter(pl.col("pooling").is_in(TOKEN_POOLING_ROWS))
    layers = sorted(layered["layer"].unique().to_list())
    grid = np.full((len(TOKEN_POOLING_ROWS), len(layers)), np.nan)
    for row in layered.iter_rows(named=True):
        grid[TOKEN_POOLING_ROWS.index(row["pooling"]), layers.index(row["layer"])] = row[score]
    figure, axes = plt.subplots(figsize=(1.1 * len(layers) + 2.5, 3.2))
    image = axes.imshow(grid, cmap="viridis", aspect="auto")
    low, high = np.nanmin(grid), np.nanmax(grid)
    for (i, j), value in np.ndenumerate(grid):
        # Dark text on viridis' light (high) end, light text on its dark end.
        light_cell = high > low and (value - low) / (high - low) > 0.6
        colour = "black" if light_cell else "white"
        axes.text(j, i, f"{value:.3f}", ha="center", va="center", color=colour, fontsize=8)
    axes.set_xticks(range(len(layers)), [str(layer) for layer in layers])
    axes.set_yticks(range(len(TOKEN_POOLING_ROWS)), TOKEN_POOLING_ROWS)
    axes.set_xlabel("encoder layer")
    axes.set_title(f"probe {score} by layer and pooling")
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_by_layer(table: pl.DataFrame, chance: float, path: Path) -> None:
    """Probe accuracy by layer, one line per token pooling; the pooler, the penultimate features
    and chance as reference marks."""
    figure, axes = plt.subplots(figsize=(6.5, 4))
    for pooling in TOKEN_POOLING_ROWS:
        line = table.filter(pl.col("pooling") == pooling).sort("layer")
        axes.plot(line["layer"], line["accuracy"], marker="o", label=pooling)
    for pooling, marker in (("pooled", "s"), ("penultimate", "*")):
        point = table.filter(pl.col("pooling") == pooling)
        if point.height:
            layer = point["layer"][0]
            x = layer if layer is not None else table["layer"].max() + 1
            axes.scatter([x], point["accuracy"], marker=marker, s=90, label=pooling, zorder=3)
    axes.axhline(chance, color="grey", linestyle="--", label="chance")
    axes.set_xlabel("encoder layer (penultimate: after the classifier's hidden layers)")
    axes.set_ylabel("test accuracy of the linear probe")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report_markdown(table: pl.DataFrame, advice: dict[str, Any], rows: dict[str, int]) -> str:
    """The recommendation, then the whole table."""
    lines = [
        "# Which embedding should I take?",
        "",
        f"Linear probes fit on {rows['train']} train rows, scored on {rows['test']} test rows; "
        f"chance (the most frequent label) is {advice['chance_accuracy']:.3f}.",
        "",
        f"- **Best for a linear classifier: {advice['best']}**, accuracy "
        f"{advice['best_accuracy']:.3f}, selectivity {advice['best_selectivity']:.3f}.",
        f"- The default {advice['default']} scores {advice['default_accuracy']:.3f}, "
        f"{advice['default_gap']:.3f} below it.",
        f"- Best for clustering (k-means, k = labels): {advice['best_for_clustering']}, "
        f"ARI {advice['best_ari']:.3f}.",
        "",
        "Selectivity is accuracy minus the same probe's accuracy on shuffled labels (the control "
        "task): high selectivity means the representation, not the probe, carries the label.",
        "",
        "| choice | dim | accuracy | macro F1 | control acc. | selectivity | ARI | NMI |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table.iter_rows(named=True):
        lines.append(
            f"| {row['choice']} | {row['dim']} | {row['accuracy']:.3f} | {row['macro_f1']:.3f} | "
            f"{row['control_accuracy']:.3f} | {row['selectivity']:.3f} | {row['ari']:.3f} | "
            f"{row['nmi']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def write_probe_artifact(
    shards: EmbeddingShards,
    blocks: list[dict[str, Any]],
    config: ProbeConfig,
    out: Path,
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Score every choice and write scores.csv, scores.json, heatmap.png, by_layer.png and
    report.md into `out`; returns the manifest metrics (the recommendation and row counts).
    `log` gets a line per scored choice."""
    rows = read_probe_rows(shards, config.max_train_rows, config.max_test_rows, config.seed)
    table = probe_table(
        rows, parse_choices(blocks), config.regularization, config.cluster_rows, config.seed, log
    )
    chance = chance_accuracy(rows.train_labels, rows.test_labels)
    advice = recommend(table, chance)
    counts = {"train": len(rows.train_labels), "test": len(rows.test_labels)}
    table.write_csv(out / "scores.csv")
    (out / "scores.json").write_text(json.dumps(table.to_dicts(), indent=1))
    plot_heatmap(table, "accuracy", out / "heatmap.png")
    plot_by_layer(table, chance, out / "by_layer.png")
    (out / "report.md").write_text(report_markdown(table, advice, counts))
    return {**advice, "rows": counts, "labels": rows.label_names, "choices": table.height}
