"""A cluster artifact's contents: the clustering (penultimate.cluster) plus what it shows people:
distinctive terms (class-based TF-IDF), the report, PNG/HTML maps, a TensorBoard projector export.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on workers or servers

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

from penultimate.cluster import (
    HTML_POINTS,
    NOISE,
    EmbeddingShards,
    Projector,
    assign_all,
    fit_clusters,
    quality_metrics,
    texts_of,
)
from penultimate.cluster_summary import cluster_name
from penultimate.config import ClusterConfig
from penultimate.stages import ASSIGNMENTS_DIR

_SNIPPET = 160


# Removed before counting: a URL or an e-mail address splits into words (`http`, `www`, `com`,
# host and path parts) that name no topic, only that the texts contain links; HTML tags and
# entities (`<font face=arial>`, `&nbsp;`), which mail often carries in its plain-text parts,
# name only the markup.
_URL_ADDRESS_OR_MARKUP = re.compile(
    r"(?:\b(?:https?|ftp)://|\bwww\.)\S+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
    r"|</?[a-z][^<>]{0,500}>|&#?\w{1,10};",
    re.IGNORECASE,
)
# Contraction endings (with a straight or a typographic apostrophe, U+2019), stripped so `don't`
# counts as `do` (a stop word), not as `don` and `t`.
_CONTRACTION_ENDING = re.compile(r"(?<=[a-z])(?:n['\u2019]t|['\u2019](?:s|ll|ve|re|d|m))\b")
# Words of at least three letters: shorter ones are mostly fragments and abbreviations, and
# digits or underscores inside a word mark ids and codes, not words.
_TERM_PATTERN = r"(?u)\b[^\W\d_]{3,}\b"
# Beyond scikit-learn's English stop words, words that top clusters of mail without naming a
# topic: what stripping `n't` leaves that the list lacks; URL parts of links written without a
# scheme; the header lines of quoted and forwarded mail (`Date: Mon, 23 Sep 2002`, `Subject:`,
# `URL:`, `mailto:`; `sat` and `sun` are words too, so they stay); and contractions written
# without their apostrophe.
EXTRA_STOP_WORDS = frozenset(
    {"does", "did"}
    | {"http", "https", "www", "com", "net", "org", "html", "htm"}
    | {"date", "subject", "url", "mailto", "mon", "tue", "wed", "thu", "fri"}
    | {"jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}
    | {"dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont", "wouldnt"}
    | {"shouldnt", "havent", "hadnt", "youre", "youve", "youll", "youd", "theyre", "theyve"}
    | {"ive", "weve", "thats", "theres", "whats", "hes", "shes"}
)


def _words_only(text: str) -> str:
    """Lower-cased text without URLs, e-mail addresses, markup and contraction endings."""
    return _CONTRACTION_ENDING.sub("", _URL_ADDRESS_OR_MARKUP.sub(" ", text.lower()))


def distinctive_terms(texts: Mapping[int, Sequence[str]], top: int) -> dict[int, list[str]]:
    """Each cluster's `top` terms by class-based TF-IDF (c-TF-IDF, as BERTopic computes it with
    `reduce_frequent_words=True`).

    A cluster's texts form one document. With `tf(t, c)` the count of term `t` in cluster `c`,
    `A` the average number of counted words per cluster and `f(t)` the count of `t` over all
    clusters, a term weighs

        W(t, c) = sqrt(tf(t, c) / sum_t' tf(t', c)) * log(1 + A / f(t))

    The square root of the (L1-normalised) term frequency damps words that are frequent
    everywhere, so the inverse frequency decides more. Counted are words of at least three
    letters, after URLs, e-mail addresses, HTML tags and entities and contraction endings
    (`'s`, `n't`, `'ll`, `'ve`, `'re`, `'d`, `'m`) are removed, except scikit-learn's English
    stop words and `EXTRA_STOP_WORDS`. Ties go to the alphabetically first term.
    """
    clusters = [c for c in texts if texts[c]]
    if not clusters:
        return {}
    vectorizer = CountVectorizer(
        preprocessor=_words_only,
        token_pattern=_TERM_PATTERN,
        stop_words=sorted(ENGLISH_STOP_WORDS | EXTRA_STOP_WORDS),
        max_features=50_000,
    )
    try:
        counts = vectorizer.fit_transform([" ".join(texts[c]) for c in clusters]).toarray()
    except ValueError:  # nothing but stop words
        return {c: [] for c in clusters}
    words = vectorizer.get_feature_names_out()  # sorted, so a stable sort breaks ties by name
    words_per_cluster = counts.sum(axis=1, keepdims=True)
    term_frequency = np.sqrt(counts / words_per_cluster.clip(min=1))
    inverse_frequency = np.log(1 + words_per_cluster.mean() / counts.sum(axis=0))
    weights = term_frequency * inverse_frequency
    return {
        c: [words[i] for i in np.argsort(-weights[row], kind="stable")[:top] if counts[row, i]]
        for row, c in enumerate(clusters)
    }


def snippet(text: str, length: int = _SNIPPET) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= length else flat[: length - 1] + "…"


def report_markdown(
    title: str,
    metrics: Mapping[str, Any],
    terms: Mapping[int, list[str]],
    nearest: Mapping[int, list[str]],
) -> str:
    """The per-cluster report: size, distinctive terms, texts nearest the centroid, label mix."""
    lines = [f"# {title}", ""]
    for name in ("silhouette", "davies_bouldin", "calinski_harabasz", "ari", "nmi", "purity"):
        if name in metrics:
            lines.append(f"- {name.replace('_', '-')}: {metrics[name]:.4f}")
    lines += [
        f"- points: {metrics['points']}, clusters: {metrics['clusters']}, noise points: "
        f"{metrics['noise_points']} (internal scores on a sample of "
        f"{metrics['scored_on_sample_of']})",
        "",
    ]
    mixes = metrics.get("label_mix", {})
    for key, size in metrics["sizes"].items():
        cluster = int(key)
        lines += [f"## {cluster_name(cluster)}: {size} points", ""]
        lines.append(f"Distinctive terms: {', '.join(terms.get(cluster, [])) or '(none)'}")
        if key in mixes:
            total = sum(mixes[key].values())
            mix = ", ".join(f"{label} {n / total:.0%}" for label, n in mixes[key].items())
            lines.append(f"\nLabel mix: {mix}")
        if nearest.get(cluster):
            lines.append("\nNearest the centroid:\n")
            lines += [f"1. {snippet(text)}" for text in nearest[cluster]]
        lines.append("")
    return "\n".join(lines)


# Beyond this many distinct values a legend stops being readable: the largest groups keep their
# colour, the rest share "other".
LEGEND_COLOURS = 20
# tab10's ten colours are far apart; tab20 pairs them with lighter shades, used past ten.
_FEW, _MANY = plt.get_cmap("tab10").colors, plt.get_cmap("tab20").colors  # type: ignore[attr-defined]
_NOISE_GREY, _OTHER_GREY = "#b0b0b0", "#dddddd"
OTHER = "other"


def natural_key(value: Any) -> tuple:
    """Sort key: noise last, numbers by value, text with embedded numbers in numeric order
    (`cluster 2` before `cluster 10`, `group-9` before `group-10`)."""
    if value == NOISE:
        return (2,)
    if isinstance(value, int | np.integer):
        return (0, int(value))
    parts = re.split(r"(\d+)", str(value))
    return (1, *[(0, int(p)) if p.isdigit() else (1, p) for p in parts])


def legend_colours(values: Sequence[Any]) -> dict[Any, str]:
    """A stable colour per value in natural order; past LEGEND_COLOURS values, the largest
    LEGEND_COLOURS - 1 groups keep one and every other value maps to `other` (light grey)."""
    counts: dict[Any, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    named = [v for v in counts if v != NOISE]
    if len(named) > LEGEND_COLOURS:
        named = sorted(named, key=lambda v: -counts[v])[: LEGEND_COLOURS - 1]
    order = sorted(named, key=natural_key)
    palette = _FEW if len(order) <= len(_FEW) else _MANY
    colours = {v: matplotlib.colors.to_hex(palette[i]) for i, v in enumerate(order)}
    for value in counts:
        colours.setdefault(value, _NOISE_GREY if value == NOISE else _OTHER_GREY)
    return colours


def legend_name(value: Any, by: str) -> str:
    return cluster_name(value) if by == "cluster" else str(value)


def stratified_sample(points: pl.DataFrame, size: int, by: str, seed: int) -> pl.DataFrame:
    """Every point when there are at most `size`; else a seeded random sample in which each `by`
    group keeps its share (at least one point each), never the first rows."""
    if points.height <= size:
        return points
    quota = (
        points.group_by(by)
        .len()
        .with_columns((pl.col("len") * size / points.height).round().clip(1).alias("_quota"))
        .select(by, "_quota")
    )
    return (
        points.sample(fraction=1.0, shuffle=True, seed=seed)
        .with_columns(pl.int_range(pl.len()).over(by).alias("_rank"))
        .join(quota, on=by)
        .filter(pl.col("_rank") < pl.col("_quota"))
        .drop("_rank", "_quota")
    )


def sample_note(shown: int, total: int, how: str) -> str:
    """What a map shows, for its title: every point, or how many and how they were drawn."""
    return f"all {total} points" if shown >= total else f"{shown} of {total} points, {how}"


def plot_map(points: pl.DataFrame, by: str, title: str, path: Path) -> None:
    """Scatter of the 2-D map coloured by `by` (cluster or label); a legend in natural order."""
    values = points[by].to_list()
    colours = legend_colours(values)
    figure, axes = plt.subplots(figsize=(9, 6.5), dpi=110)
    axes.scatter(
        points["x"], points["y"], c=[colours[v] for v in values], s=6, alpha=0.7, linewidths=0
    )
    shown = sorted({v for v in values if colours[v] != _OTHER_GREY}, key=natural_key)
    for value in shown:
        axes.scatter([], [], c=[colours[value]], s=30, label=legend_name(value, by))
    if len(shown) < len(set(values)):
        others = len(set(values)) - len(shown)
        axes.scatter([], [], c=[_OTHER_GREY], s=30, label=f"{OTHER} ({others} smaller)")
    axes.legend(
        loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, markerscale=1.2, frameon=False
    )
    axes.set_title(title, fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def map_html(
    points: pl.DataFrame, texts: Sequence[str], terms: Mapping[int, list[str]], title: str
) -> str:
    """An interactive plotly map (self-contained: plotly.js inline, no downloads): zoom, pan,
    legend toggles, colour by cluster or label (the buttons), hover with id, cluster, label and
    a text snippet, each cluster labelled at its centre with its top terms."""
    import plotly.graph_objects as go

    hover = [
        f"<b>{row_id}</b><br>{cluster_name(c)} · label {label}<br>{html.escape(snippet(t, 120))}"
        for row_id, c, label, t in zip(
            points["id"], points["cluster"], _labels(points), texts, strict=True
        )
    ]
    figure = go.Figure()
    groupings = ["cluster", "label"] if "label" in points.columns else ["cluster"]
    visible_by: dict[str, list[bool]] = {by: [] for by in groupings}
    for by in groupings:
        values = points[by].to_list()
        colours = legend_colours(values)
        for value in sorted(set(values), key=natural_key):
            rows = [i for i, v in enumerate(values) if v == value]
            figure.add_trace(
                go.Scattergl(
                    x=points["x"].to_numpy()[rows],
                    y=points["y"].to_numpy()[rows],
                    mode="markers",
                    name=legend_name(value, by),
                    marker={"size": 5, "color": colours[value], "opacity": 0.75},
                    hovertext=[hover[i] for i in rows],
                    hoverinfo="text",
                    visible=by == "cluster",
                )
            )
            for grouping in groupings:
                visible_by[grouping].append(grouping == by)
    centres = points.group_by("cluster").agg(pl.col("x").mean(), pl.col("y").mean())
    for cluster, x, y in centres.iter_rows():
        if cluster == NOISE:
            continue
        words = ", ".join(terms.get(cluster, [])[:3])
        figure.add_annotation(
            x=x, y=y, text=f"<b>{cluster}</b> {html.escape(words)}", showarrow=False,
            bgcolor="rgba(255,255,255,0.7)", font={"size": 11},
        )  # fmt: skip
    buttons = [
        {"label": f"colour by {by}", "method": "update", "args": [{"visible": visible_by[by]}]}
        for by in groupings
    ]
    figure.update_layout(
        title=title,
        template="plotly_white",
        height=750,
        dragmode="pan",
        legend={"itemsizing": "constant"},
        margin={"t": 120},
        updatemenus=[
            {
                "buttons": buttons,
                "type": "buttons",
                "direction": "right",
                "x": 1,
                "y": 1.12,
                "xanchor": "right",
                "yanchor": "bottom",
            }
        ],
        xaxis={"visible": False},
        yaxis={"visible": False},
    )
    return figure.to_html(include_plotlyjs=True, full_html=True, config={"scrollZoom": True})


def _labels(points: pl.DataFrame) -> list[Any]:
    return points["label"].to_list() if "label" in points.columns else [None] * points.height


def write_projector(
    folder: Path, vectors: np.ndarray, metadata: pl.DataFrame, texts: Sequence[str]
) -> None:
    """TensorBoard Embedding Projector files: tensors.tsv, metadata.tsv, projector_config.pbtxt
    (point TensorBoard's --logdir at the folder, or load both TSVs at projector.tensorflow.org)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / "tensors.tsv", vectors, delimiter="\t", fmt="%.6g")
    columns = [c for c in ("id", "cluster", "label", "split") if c in metadata.columns]

    def clean(value: Any) -> str:
        return str(value).replace("\t", " ").replace("\n", " ")

    rows = ["\t".join([*columns, "text"])]
    for i, record in enumerate(metadata.select(columns).iter_rows()):
        rows.append("\t".join([*(clean(v) for v in record), clean(snippet(texts[i], 100))]))
    (folder / "metadata.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (folder / "projector_config.pbtxt").write_text(
        'embeddings {\n  tensor_name: "embeddings"\n  tensor_path: "tensors.tsv"\n'
        '  metadata_path: "metadata.tsv"\n}\n'
    )


def write_cluster_artifact(
    shards: EmbeddingShards, config: ClusterConfig, out: Path
) -> dict[str, Any]:
    """Fill a cluster artifact folder from validated shards; returns its metrics.

    `assignments/` (Parquet per shard: id, cluster, x, y, label, split), `metrics.json`,
    `report.md`, `map_by_cluster.png`, `map_by_label.png`, `map.html`, `projector/`.
    """
    fitted = fit_clusters(shards, config)
    projector = Projector(fitted, config)
    summary = assign_all(shards, fitted, projector, out / ASSIGNMENTS_DIR, config.seed)
    metrics = quality_metrics(fitted, summary, config)
    wanted: dict[int, list[int]] = {}
    for pairs in [*summary.text_sample.values(), *summary.nearest.values()]:
        for pair in pairs:
            shard, row = pair[-2:]
            wanted.setdefault(shard, []).append(row)
    points = pl.concat(summary.plot)
    html_points = stratified_sample(points, HTML_POINTS, "cluster", config.seed)
    for shard, row in html_points.select("shard", "row").iter_rows():
        wanted.setdefault(shard, []).append(row)
    texts = texts_of(shards, wanted)
    sampled = {c: [texts[p] for p in pairs] for c, pairs in summary.text_sample.items()}
    terms = distinctive_terms(sampled, config.top_terms)
    nearest = {
        c: [texts[(shard, row)] for _, shard, row in sorted(heap, reverse=True)]
        for c, heap in summary.nearest.items()
    }
    metrics["terms"] = {str(c): t for c, t in sorted(terms.items())}
    algorithm = f"{config.algorithm}, k={metrics['clusters']}"
    title = f"Clusters of {shards.total} embeddings ({algorithm}, {config.projection} map)"
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "report.md").write_text(report_markdown(title, metrics, terms, nearest))
    shown = sample_note(points.height, shards.total, "a seeded uniform random sample")
    for by in ("cluster", "label") if "label" in points.columns else ("cluster",):
        plot_map(points, by, f"{title}\n{shown}, coloured by {by}", out / f"map_by_{by}.png")
    html_texts = [texts[p] for p in html_points.select("shard", "row").iter_rows()]
    stratified = "a seeded random sample stratified by cluster"
    html_note = sample_note(html_points.height, shards.total, stratified)
    html_title = f"{title}<br><sub>{html_note}</sub>"
    (out / "map.html").write_text(
        map_html(html_points, html_texts, terms, html_title), encoding="utf-8"
    )
    projector_rows, projector_vectors = [], []
    for shard, group in html_points.group_by("shard", maintain_order=True):
        vectors = shards.read(int(shard[0]))[1]  # type: ignore[index]
        projector_vectors.append(vectors[group["row"].to_numpy()])
        projector_rows.append(group)
    write_projector(
        out / "projector",
        np.concatenate(projector_vectors),
        pl.concat(projector_rows),
        [texts[p] for p in pl.concat(projector_rows).select("shard", "row").iter_rows()],
    )
    return {k: v for k, v in metrics.items() if k not in ("label_mix", "terms")}
