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
from penultimate.config import ClusterConfig

_PALETTE = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors  # type: ignore[attr-defined]
_SNIPPET = 160


def cluster_name(cluster: int) -> str:
    return "noise" if cluster == NOISE else f"cluster {cluster}"


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


def _colours(values: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """A stable colour per distinct value (noise grey), and the legend order."""
    order = sorted(set(values), key=lambda v: (v == NOISE, str(v)))
    colour = {v: "#b0b0b0" if v == NOISE else _PALETTE[i % len(_PALETTE)] for i, v in
              enumerate(order)}  # fmt: skip
    return [colour[v] for v in values], [(v, colour[v]) for v in order]


def plot_map(points: pl.DataFrame, by: str, title: str, path: Path) -> None:
    """Scatter of the 2-D map coloured by `by` (cluster or label)."""
    values = points[by].to_list()
    colours, legend = _colours(values)
    figure, axes = plt.subplots(figsize=(8, 6.5), dpi=110)
    axes.scatter(points["x"], points["y"], c=colours, s=6, alpha=0.7, linewidths=0)
    for value, colour in legend[:20]:
        name = cluster_name(value) if by == "cluster" else str(value)
        axes.scatter([], [], c=[colour], s=30, label=name)
    axes.legend(loc="best", fontsize=8, markerscale=1.2, frameon=True)
    axes.set_title(title, fontsize=11)
    axes.set_xticks([])
    axes.set_yticks([])
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def map_html(points: pl.DataFrame, texts: Sequence[str], title: str) -> str:
    """A self-contained interactive map (inline SVG, no scripts or downloads): hovering a point
    shows its id, cluster, label and a text snippet."""
    width, height, pad = 900, 700, 20
    x, y = points["x"].to_numpy(), points["y"].to_numpy()
    span_x, span_y = float(np.ptp(x)) or 1.0, float(np.ptp(y)) or 1.0
    colours, legend = _colours(points["cluster"].to_list())
    labels = points["label"].to_list() if "label" in points.columns else [None] * len(points)
    circles = []
    for i, row_id in enumerate(points["id"].to_list()):
        cx = pad + (x[i] - x.min()) / span_x * (width - 2 * pad)
        cy = height - pad - (y[i] - y.min()) / span_y * (height - 2 * pad)
        tip = f"{row_id} | {cluster_name(points['cluster'][i])} | label: {labels[i]}\n"
        tip += snippet(texts[i])
        circles.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{_hex(colours[i])}">'
            f"<title>{html.escape(tip)}</title></circle>"
        )
    keys = "".join(
        f'<span style="color:{_hex(c)}">&#9679;</span> {html.escape(cluster_name(v))} &nbsp; '
        for v, c in legend
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif}}"
        "circle:hover{stroke:#000;stroke-width:1.5}</style></head><body>"
        f"<h2>{html.escape(title)}</h2><p>Hover a point for its id, cluster, label and text. "
        f"{len(points)} points.</p><p>{keys}</p>"
        f'<svg width="{width}" height="{height}" style="border:1px solid #ccc">'
        + "".join(circles)
        + "</svg></body></html>"
    )


def _hex(colour: Any) -> str:
    if isinstance(colour, str):
        return colour
    return "#" + "".join(f"{round(255 * c):02x}" for c in colour[:3])


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


def summary_table(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the Prefect cluster-summary table, from a cluster artifact's metrics.json."""
    mixes, terms = metrics.get("label_mix", {}), metrics.get("terms", {})
    return [
        {
            "cluster": cluster_name(int(key)),
            "size": size,
            "top terms": ", ".join(terms.get(key, [])[:5]),
            "label mix": ", ".join(f"{k} {v}" for k, v in mixes.get(key, {}).items()),
        }
        for key, size in metrics["sizes"].items()
    ]


def write_cluster_artifact(
    shards: EmbeddingShards, config: ClusterConfig, out: Path
) -> dict[str, Any]:
    """Fill a cluster artifact folder from validated shards; returns its metrics.

    `assignments/` (Parquet per shard: id, cluster, x, y, label, split), `metrics.json`,
    `report.md`, `map_by_cluster.png`, `map_by_label.png`, `map.html`, `projector/`.
    """
    fitted = fit_clusters(shards, config)
    projector = Projector(fitted, config)
    summary = assign_all(shards, fitted, projector, out / "assignments", config.seed)
    metrics = quality_metrics(fitted, summary, config)
    wanted: dict[int, list[int]] = {}
    for pairs in [*summary.text_sample.values(), *summary.nearest.values()]:
        for pair in pairs:
            shard, row = pair[-2:]
            wanted.setdefault(shard, []).append(row)
    points = pl.concat(summary.plot)
    html_points = points.head(HTML_POINTS)
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
    plot_map(points, "cluster", f"{title}\ncoloured by cluster", out / "map_by_cluster.png")
    if "label" in points.columns:
        plot_map(points, "label", f"{title}\ncoloured by label", out / "map_by_label.png")
    html_texts = [texts[p] for p in html_points.select("shard", "row").iter_rows()]
    (out / "map.html").write_text(map_html(html_points, html_texts, title), encoding="utf-8")
    projector_rows, projector_vectors = [], []
    for shard, group in points.head(HTML_POINTS).group_by("shard", maintain_order=True):
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
