"""The dropout report as people see it: `report.json`, one picture per dropout layer of the mask
it drew, and the markdown of the Prefect `dropout-report`. Plain numpy/matplotlib, no TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from penultimate.artifacts import ArtifactRef
from penultimate.ui import inline_png, markdown_table

DROPOUT_REPORT_DIR = "dropout_report"
REPORT_FILE = "report.json"
# What `penultimate explain-dropout` adds: the markdown with the pictures inline.
MARKDOWN_FILE = "report.md"
# Samples of a sequence mask drawn side by side: two show whether samples share one mask.
_PICTURED_SAMPLES = 2


def explained_artifacts(uri: str | Path) -> tuple[ArtifactRef, ArtifactRef]:
    """The classifier artifact a dropout report explains, given its URI or the URI of an export
    made from it, and that classifier's dataset artifact; checked before any TensorFlow loads, so
    a wrong path is an error at once."""
    from penultimate.artifacts import ArtifactStore, open_artifact
    from penultimate.errors import InputError
    from penultimate.stages import CLASSIFIER_STAGE, DATASET_STAGE, EXPORT_STAGE

    path = Path(uri).expanduser().resolve()
    store = ArtifactStore(path.parent.parent)
    if path.parent.name == EXPORT_STAGE.name:
        classifier = store.input_of(open_artifact(path, EXPORT_STAGE.name), CLASSIFIER_STAGE)
        if classifier is None:
            raise InputError(f"{uri}: the export names no classifier artifact in this store")
    else:
        classifier = open_artifact(path, CLASSIFIER_STAGE.name)
    dataset = store.input_of(classifier, DATASET_STAGE)
    if dataset is None or store.validate(dataset) is None:
        raise InputError(f"{classifier.uri}: its dataset artifact is not in this store")
    return classifier, dataset


def mask_picture_name(layer: str) -> str:
    return f"mask_{layer}.png"


def plot_mask(realised: np.ndarray, stats: Mapping[str, Any], path: Path) -> None:
    """The realised mask (`explain_dropout.DROPPED/KEPT/UNKNOWN` per value): tokens x features
    of the first two samples for token states, samples x features for vectors; dropped values
    dark, kept ones light, inputs that were already 0 grey, so stripes show the axes one draw
    covers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    sequence = realised.ndim == 3
    panels = list(realised[:_PICTURED_SAMPLES]) if sequence else [realised]
    figure, axes = plt.subplots(
        1, len(panels), figsize=(6.5 * len(panels), 4.6), dpi=110, squeeze=False
    )
    colours = ListedColormap(["#1f3b73", "#e8eef7", "#b0b0b0"])
    for index, (panel, axis) in enumerate(zip(panels, axes[0], strict=True)):
        axis.imshow(panel, cmap=colours, vmin=0, vmax=2, aspect="auto", interpolation="nearest")
        axis.set_xlabel(f"feature (0-{panel.shape[1] - 1})")
        axis.set_ylabel("token position" if sequence else "sample in the batch")
        if sequence:
            axis.set_title(f"sample {index}", fontsize=10)
    shared = ", ".join(stats["shared_along"]) or "nothing"
    columns = "all" if stats["columns"] is None else f"{len(stats['columns'])} named"
    figure.suptitle(
        f"{stats['layer']}: mask {stats['mask']}, rate {stats['rate']:g}, columns {columns}\n"
        f"dropped {_share(stats['observed_drop_fraction'])} of {stats['mask_units']} mask "
        f"units; one draw shared along: {shared}\n"
        "dark = dropped, light = kept, grey = input already 0 (no draw to see)",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_dropout_report(report: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """Write `report.json` (the masks' statistics without the arrays) and a mask picture per
    dropout layer into `folder`; return the headline that goes into metrics.json."""
    folder.mkdir(parents=True, exist_ok=True)
    masks = []
    for stats in report["masks"]:
        plot_mask(stats["realised"], stats, folder / mask_picture_name(stats["layer"]))
        masks.append({k: v for k, v in stats.items() if k != "realised"})
    written = {**report, "masks": masks}
    (folder / REPORT_FILE).write_text(json.dumps(written, indent=2))
    return {
        "masks": {
            m["layer"]: {
                "observed_drop_fraction": m["observed_drop_fraction"],
                "rate": m["rate"],
                "within_bound": m["within_bound"],
                "shared_along": m["shared_along"],
            }
            for m in masks
        },
        "changed_layers": [w["layer"] for w in report["weights"] if w["changed"]],
        "unchanged_layers": [w["layer"] for w in report["weights"] if not w["changed"]],
    }


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _layer_rows(weights: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    return [
        [
            w["layer"],
            w["weights"],
            f"{w['gradient_norm']:.3g}",
            _yes(w["changed"]),
            f"{w['max_weight_change']:.3g}",
        ]
        for w in weights
    ]


def dropout_report_markdown(folder: Path, store_root: Path, title: str) -> str:
    """The `dropout-report` markdown from a written report folder: per dropout layer its mask
    picture and numbers, the layers it moves, and the served embedding against dropout."""
    report = json.loads((folder / REPORT_FILE).read_text())
    lines = [
        f"# Dropout report: {title}",
        "",
        f"On one batch of {report['batch']} training texts ({report['real_tokens']} real tokens, "
        f"padded to {report['tokens']}), `training=True`; freeze: `{report['freeze']}`.",
        "",
        "## What each mask drops",
        "",
    ]
    lines += markdown_table(
        ["layer", "mask", "rate", "dropped (observed)", "bound", "mask units", "shared along",
         "kept values scaled by"],
        [
            [
                m["layer"],
                m["mask"],
                m["rate"],
                _share(m["observed_drop_fraction"]),
                f"±{_share(m['binomial_bound'])} ({_yes(m['within_bound'])})",
                m["mask_units"],
                ", ".join(m["shared_along"]) or "-",
                "-" if m["kept_scale_mean"] is None else f"{m['kept_scale_mean']:.4f}",
            ]
            for m in report["masks"]
        ],
    )  # fmt: skip
    for m in report["masks"]:
        lines += ["", inline_png(folder / mask_picture_name(m["layer"]), m["layer"], store_root)]
    lines += [
        "",
        "## Which layers it touches",
        "",
        "One training step on the batch: a layer's weights move only if its optimiser trains "
        "them; a frozen block gets a gradient and stays bit-identical.",
        "",
    ]
    lines += markdown_table(
        ["layer", "weights", "gradient norm", "changed by the step", "largest change"],
        _layer_rows(report["weights"]),
    )
    lines += ["", "Each output, `training=True` against `training=False`:", ""]
    lines += markdown_table(
        ["output", "changes", "relative change", "mean cosine"],
        [
            [o["output"], _yes(o["changed"]), o["relative_change"], o["cosine_mean"]]
            for o in report["outputs"]
        ],
    )
    lines += ["", "## The served embedding and dropout", ""]
    lines += markdown_table(
        ["comparison", "mean cosine", "lowest cosine"],
        [[e["comparison"], e["cosine_mean"], e["cosine_min"]] for e in report["embeddings"]],
    )
    return "\n".join(lines) + "\n"


def dropout_report_summary(folder: Path) -> str:
    """What a terminal shows of a written report: each mask's numbers, the layers a step moved
    and kept, where the full report is."""
    report = json.loads((folder / REPORT_FILE).read_text())
    lines = []
    for m in report["masks"]:
        shared = ", ".join(m["shared_along"]) or "nothing"
        verdict = "within" if m["within_bound"] else "OUTSIDE"
        lines.append(
            f"{m['layer']} ({m['mask']}, rate {m['rate']:g}): dropped "
            f"{_share(m['observed_drop_fraction'])} of {m['mask_units']} mask units ({verdict} "
            f"±{_share(m['binomial_bound'])}); one draw shared along {shared}"
        )
    if not report["masks"]:
        lines.append("no dropout layer: training and inference compute the same")
    moved = [w["layer"] for w in report["weights"] if w["changed"]]
    kept = [w["layer"] for w in report["weights"] if not w["changed"]]
    lines.append(f"one training step moves: {', '.join(moved) or 'nothing'}")
    lines.append(f"bit-identical after it: {', '.join(kept) or 'nothing'}")
    for e in report["embeddings"]:
        lines.append(f"{e['comparison']}: mean cosine {e['cosine_mean']:.4f}")
    lines.append(f"report: {folder / MARKDOWN_FILE} (pictures: {folder}/mask_*.png)")
    return "\n".join(lines)
