"""Cluster an embeddings artifact without holding it in memory: validate the shards in a streaming
pass, fit on a sample (or in mini-batches), then assign, score and project every point per shard.
"""

from __future__ import annotations

import contextlib
import heapq
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from sklearn.cluster import HDBSCAN, AgglomerativeClustering, KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.neighbors import NearestNeighbors

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.cluster_summary import NOISE
from penultimate.config import ClusterAlgorithm, ClusterConfig, Projection
from penultimate.embeddings import SHARD_FILE, read_embeddings
from penultimate.errors import InputError
from penultimate.stages import EMBEDDING_SHARD_STAGE

# Exact agglomerative and hdbscan need memory quadratic in the points they fit on.
QUADRATIC_FIT_CAP = 10_000
# Points drawn for the maps and the interactive HTML (the Parquet assignments hold every point).
PLOT_POINTS = 20_000
HTML_POINTS = 3_000
TEXTS_PER_CLUSTER = 200  # sampled texts per cluster for its distinctive terms
NEAREST_TEXTS = 3
_CHUNK = 8192


class ClusterInputError(InputError):
    """Embeddings that cannot be clustered; the message names the shard file and row."""


@dataclass(frozen=True)
class EmbeddingShards:
    """The shard files of a complete embeddings artifact, with their row counts and dimension."""

    files: list[Path]
    rows: list[int]
    dim: int
    dataset_shards: list[Path]

    @classmethod
    def open(cls, ref: ArtifactRef) -> EmbeddingShards:
        """Check the artifact is complete (manifest + checksums) and its shards agree."""
        store = ArtifactStore(ref.path.parent.parent)
        manifest = store.validate(ref)
        if manifest is None:
            raise ClusterInputError(
                f"{ref.uri}: not a complete embeddings artifact (manifest missing, invalid or "
                "a file does not match its checksum)"
            )
        files, rows, dims, sources = [], [], set(), []
        for shard in manifest.metrics["shards"]:
            shard_ref = store.ref(EMBEDDING_SHARD_STAGE, shard["key"])
            shard_manifest = store.validate(shard_ref)
            if shard_manifest is None:
                raise ClusterInputError(f"{shard_ref.uri}: embedding shard missing or damaged")
            if shard["rows"] == 0:
                continue
            file = shard_ref.path / SHARD_FILE
            dim = pq.read_schema(file).field("embedding").type.list_size
            files.append(file)
            rows.append(int(shard["rows"]))
            dims.add(dim)
            sources.append(store.root / shard_manifest.metrics["source_shard"])
            if len(dims) > 1:
                raise ClusterInputError(
                    f"{file}: dimension {dim}, but earlier shards have {sorted(dims - {dim})}"
                )
        if sum(rows) < 2:
            raise ClusterInputError(f"{ref.uri}: {sum(rows)} point(s); clustering needs >= 2")
        return cls(files, rows, dims.pop(), sources)

    @property
    def total(self) -> int:
        return sum(self.rows)

    def read(self, index: int) -> tuple[pl.DataFrame, np.ndarray]:
        frame, matrix = read_embeddings([self.files[index]])
        return frame, np.asarray(matrix, np.float32)

    def __iter__(self) -> Iterator[tuple[int, pl.DataFrame, np.ndarray]]:
        for index in range(len(self.files)):
            yield (index, *self.read(index))

    def check_finite(self) -> None:
        """A streaming pass: every value finite, or an error naming the shard, row and id."""
        for index, frame, matrix in self:
            bad = ~np.isfinite(matrix).all(axis=1)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ClusterInputError(
                    f"{self.files[index]}: row {row} (id {frame['id'][row]!r}) has a NaN or "
                    "infinite value"
                )

    def sample(self, size: int, seed: int) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
        """`size` rows drawn uniformly without replacement: rows, vectors, global row numbers."""
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(self.total, size=min(size, self.total), replace=False))
        starts = np.cumsum([0, *self.rows])
        frames, matrices = [], []
        for index, frame, matrix in self:
            local = chosen[(chosen >= starts[index]) & (chosen < starts[index + 1])] - starts[index]
            frames.append(frame[local])
            matrices.append(matrix[local])
        return pl.concat(frames), np.concatenate(matrices), chosen


@dataclass
class FittedClusters:
    """A reducer, a clustering of the fit sample, and how to assign any other point."""

    reducer: PCA | None
    model: KMeans | MiniBatchKMeans | None
    sample_points: np.ndarray  # the fit sample in clustering space
    sample_rows: np.ndarray  # its global row numbers (over the shards in order), ascending
    sample_labels: np.ndarray
    centroids: dict[int, np.ndarray]
    k_scores: dict[int, float] = field(default_factory=dict)
    _neighbours: NearestNeighbors | None = None

    def reduce(self, matrix: np.ndarray) -> np.ndarray:
        return matrix if self.reducer is None else self.reducer.transform(matrix).astype(np.float32)

    def assign(self, points: np.ndarray) -> np.ndarray:
        """Cluster of each point (in clustering space): the model's, or the nearest sampled
        point's for methods that cannot label new points."""
        if self.model is not None:
            return self.model.predict(points).astype(np.int32)
        if self._neighbours is None:
            self._neighbours = NearestNeighbors(n_neighbors=1).fit(self.sample_points)
        nearest = self._neighbours.kneighbors(points, return_distance=False)[:, 0]
        return self.sample_labels[nearest].astype(np.int32)


def validate_cluster_inputs(shards: EmbeddingShards, config: ClusterConfig) -> None:
    """Every error a fit would hit, raised before any fitting."""
    shards.check_finite()
    if config.k_range is not None and config.k_range[1] > shards.total:
        raise ClusterInputError(
            f"k_range: highest k {config.k_range[1]} is larger than the number of points "
            f"({shards.total})"
        )
    if config.k_range is None and config.k is not None and config.k > shards.total:
        raise ClusterInputError(
            f"k: {config.k} is larger than the number of points ({shards.total})"
        )
    fitted = min(shards.total, fit_sample_size(config))
    if config.algorithm == ClusterAlgorithm.hdbscan and config.min_cluster_size > fitted:
        raise ClusterInputError(
            f"min_cluster_size: {config.min_cluster_size} is larger than the {fitted} points "
            "hdbscan fits on; lower it"
        )
    if config.reduce_to is not None and config.reduce_to > min(shards.dim, shards.total):
        raise ClusterInputError(
            f"reduce_to: {config.reduce_to} exceeds min(dimension {shards.dim}, points "
            f"{shards.total})"
        )


def fit_sample_size(config: ClusterConfig) -> int:
    if config.algorithm in (ClusterAlgorithm.agglomerative, ClusterAlgorithm.hdbscan):
        return min(config.fit_sample, QUADRATIC_FIT_CAP)
    return config.fit_sample


def choose_k(points: np.ndarray, config: ClusterConfig) -> tuple[int, dict[int, float]]:
    """k from `k_range` by silhouette on (a sample of) the fit points; `k` otherwise."""
    if config.k_range is None:
        assert config.k is not None
        return config.k, {}
    subset = points[: config.metrics_sample]
    scores = {}
    for k in range(config.k_range[0], min(config.k_range[1], len(subset) - 1) + 1):
        labels = KMeans(k, n_init=3, random_state=config.seed).fit_predict(subset)
        scores[k] = float(silhouette_score(subset, labels)) if len(set(labels)) > 1 else -1.0
    return max(scores, key=scores.__getitem__), scores


def fit_clusters(shards: EmbeddingShards, config: ClusterConfig) -> FittedClusters:
    """Fit on a uniform sample; `minibatch_kmeans` then also streams every shard through
    `partial_fit`, so the full data set is never in memory at once."""
    _, sample, sample_rows = shards.sample(fit_sample_size(config), config.seed)
    reducer = None
    if config.reduce_to is not None:
        reducer = PCA(config.reduce_to, random_state=config.seed).fit(sample)
        sample = reducer.transform(sample).astype(np.float32)
    k, scores = (
        (0, {}) if config.algorithm == ClusterAlgorithm.hdbscan else choose_k(sample, config)
    )
    model: KMeans | MiniBatchKMeans | None = None
    if config.algorithm == ClusterAlgorithm.kmeans:
        model = KMeans(k, n_init=4, random_state=config.seed).fit(sample)
    elif config.algorithm == ClusterAlgorithm.minibatch_kmeans:
        model = MiniBatchKMeans(k, batch_size=2048, n_init=3, random_state=config.seed)
        model.partial_fit(sample)  # the sample starts the centres well; then every point
        for _, _, matrix in shards:
            for start in range(0, len(matrix), _CHUNK):
                chunk = matrix[start : start + _CHUNK]
                model.partial_fit(chunk if reducer is None else reducer.transform(chunk))
    if model is not None:
        labels = model.predict(sample)
        centroids = {c: model.cluster_centers_[c].astype(np.float32) for c in range(k)}
    else:
        if config.algorithm == ClusterAlgorithm.agglomerative:
            labels = AgglomerativeClustering(k).fit_predict(sample)
        else:
            labels = HDBSCAN(min_cluster_size=config.min_cluster_size, copy=True).fit_predict(
                sample
            )
        centroids = {
            int(c): sample[labels == c].mean(axis=0) for c in np.unique(labels) if c != NOISE
        }
    return FittedClusters(
        reducer, model, sample, sample_rows, labels.astype(np.int32), centroids, scores
    )


class Projector:
    """2-D map coordinates: PCA for every point; UMAP/t-SNE fitted on a sample, whose points keep
    the coordinates of the fit (UMAP maps the rest with its `transform`; t-SNE cannot, so other
    points take their nearest sampled point's)."""

    def __init__(self, fitted: FittedClusters, config: ClusterConfig) -> None:
        rng = np.random.default_rng(config.seed)
        points, rows = fitted.sample_points, fitted.sample_rows
        self.method = config.projection
        self._neighbours: NearestNeighbors | None = None
        if self.method == Projection.pca:
            self._model: Any = PCA(2, random_state=config.seed).fit(points)
            return
        if len(points) > config.projection_sample:
            picked = np.sort(rng.choice(len(points), config.projection_sample, replace=False))
            points, rows = points[picked], rows[picked]
        self._fitted_rows = rows  # ascending: the fitted points' global row numbers
        if self.method == Projection.umap:
            umap = import_umap_with_numba_cache()
            self._model = umap.UMAP(n_components=2, random_state=config.seed, n_jobs=1).fit(points)
            # A fitted point's own coordinates: `transform` would place it anew, elsewhere.
            self._coords = np.asarray(self._model.embedding_, np.float32)
        else:
            from sklearn.manifold import TSNE

            perplexity = min(30.0, (len(points) - 1) / 3)
            self._coords = TSNE(
                2, perplexity=perplexity, random_state=config.seed, init="pca"
            ).fit_transform(points)
            self._neighbours = NearestNeighbors(n_neighbors=1).fit(points)

    def project(self, points: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Map coordinates [n, 2] of `points` [n, d], whose global row numbers are `rows` [n]."""
        if self.method == Projection.pca:
            return self._model.transform(points).astype(np.float32)
        fitted = np.minimum(np.searchsorted(self._fitted_rows, rows), len(self._fitted_rows) - 1)
        known = self._fitted_rows[fitted] == rows
        xy = np.empty((len(points), 2), np.float32)
        xy[known] = self._coords[fitted[known]]
        if (~known).any():
            others = points[~known]
            if self._neighbours is not None:
                nearest = self._neighbours.kneighbors(others, return_distance=False)[:, 0]
                xy[~known] = self._coords[nearest]
            else:  # UMAP, and only points outside its fit sample: no numba search compiled
                xy[~known] = self._model.transform(others)
        return xy


def import_umap_with_numba_cache() -> Any:
    """`umap`, imported only when asked for, with numba's on-disk cache on for its compiled
    functions: umap-learn declares most without `cache=True`, so every new process compiled them
    again (measured: a 600-point fit took 8.0 s in a fresh process, 0.8 s with the cache warm)."""
    import umap
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    for name, module in list(sys.modules.items()):
        if name != "umap" and not name.startswith("umap."):
            continue
        for function in vars(module).values():
            if isinstance(function, CPUDispatcher) and isinstance(function._cache, NullCache):
                # No writable cache location (e.g. a read-only install): compile as before.
                with contextlib.suppress(RuntimeError):
                    function.enable_caching()
    return umap


@dataclass
class AssignmentSummary:
    """What the streaming assignment pass keeps: small per-cluster tallies, never all vectors."""

    sizes: Counter[int] = field(default_factory=Counter)
    label_mix: dict[int, Counter[str]] = field(default_factory=dict)
    clusters: list[np.ndarray] = field(default_factory=list)  # per shard, for ARI/NMI
    labels: list[list[str]] = field(default_factory=list)
    nearest: dict[int, list[tuple[float, int, int]]] = field(default_factory=dict)
    text_sample: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    plot: list[pl.DataFrame] = field(default_factory=list)


def assign_all(
    shards: EmbeddingShards,
    fitted: FittedClusters,
    projector: Projector,
    out: Path,
    seed: int,
) -> AssignmentSummary:
    """Write `out/part-<i>.parquet` (id, cluster, x, y, passthrough) per shard and tally sizes,
    label mix, the points nearest each centroid, a text sample per cluster and a plot sample."""
    out.mkdir(parents=True, exist_ok=True)
    summary = AssignmentSummary()
    rng = np.random.default_rng(seed)
    plot_share = min(1.0, PLOT_POINTS / shards.total)
    seen: Counter[int] = Counter()
    first_rows = np.cumsum([0, *shards.rows])
    for index, frame, matrix in shards:
        points = fitted.reduce(matrix)
        clusters = fitted.assign(points)
        xy = projector.project(points, first_rows[index] + np.arange(len(points)))
        table = frame.with_columns(
            pl.Series("cluster", clusters, pl.Int32),
            pl.Series("x", xy[:, 0], pl.Float32),
            pl.Series("y", xy[:, 1], pl.Float32),
        ).select("id", "cluster", "x", "y", *[c for c in ("label", "split") if c in frame.columns])
        pq.write_table(table.to_arrow(), out / f"part-{index:05d}.parquet", compression="zstd")
        summary.clusters.append(clusters)
        labels = frame["label"].cast(pl.String).to_list() if "label" in frame.columns else None
        if labels is not None:
            summary.labels.append(labels)
        summary.sizes.update(clusters.tolist())
        for cluster in np.unique(clusters):
            rows = np.flatnonzero(clusters == cluster)
            cluster = int(cluster)
            if labels is not None:
                summary.label_mix.setdefault(cluster, Counter()).update(labels[r] for r in rows)
            if cluster in fitted.centroids:
                distances = np.linalg.norm(points[rows] - fitted.centroids[cluster], axis=1)
                heap = summary.nearest.setdefault(cluster, [])
                for distance, row in zip(distances.tolist(), rows.tolist(), strict=True):
                    entry = (-distance, index, row)  # a max-heap of the smallest distances
                    if len(heap) < NEAREST_TEXTS:
                        heapq.heappush(heap, entry)
                    elif entry > heap[0]:
                        heapq.heapreplace(heap, entry)
            reservoir = summary.text_sample.setdefault(cluster, [])
            for row in rows.tolist():  # reservoir sampling keeps a uniform sample per cluster
                seen[cluster] += 1
                if len(reservoir) < TEXTS_PER_CLUSTER:
                    reservoir.append((index, row))
                else:
                    slot = int(rng.integers(seen[cluster]))
                    if slot < TEXTS_PER_CLUSTER:
                        reservoir[slot] = (index, row)
        keep = rng.random(len(frame)) < plot_share
        sampled = table.filter(pl.Series(keep))
        summary.plot.append(
            sampled.with_columns(
                pl.lit(index).alias("shard"), pl.Series("row", np.flatnonzero(keep), pl.Int64)
            )
        )
    return summary


def quality_metrics(
    fitted: FittedClusters, summary: AssignmentSummary, config: ClusterConfig
) -> dict[str, Any]:
    """Internal scores on a sample (noise excluded); with labels, agreement over every point."""
    clustered = fitted.sample_labels != NOISE
    points = fitted.sample_points[clustered][: config.metrics_sample]
    labels = fitted.sample_labels[clustered][: config.metrics_sample]
    metrics: dict[str, Any] = {
        "points": int(sum(summary.sizes.values())),
        "clusters": len([c for c in summary.sizes if c != NOISE]),
        "noise_points": int(summary.sizes.get(NOISE, 0)),
        "sizes": {str(c): n for c, n in sorted(summary.sizes.items())},
        "scored_on_sample_of": len(points),
    }
    if 2 <= len(set(labels.tolist())) < len(points):
        metrics["silhouette"] = float(silhouette_score(points, labels))
        metrics["davies_bouldin"] = float(davies_bouldin_score(points, labels))
        metrics["calinski_harabasz"] = float(calinski_harabasz_score(points, labels))
    if fitted.k_scores:
        metrics["silhouette_by_k"] = {str(k): v for k, v in fitted.k_scores.items()}
    if summary.labels:
        truth = [label for shard in summary.labels for label in shard]
        predicted = np.concatenate(summary.clusters)
        metrics["ari"] = float(adjusted_rand_score(truth, predicted))
        metrics["nmi"] = float(normalized_mutual_info_score(truth, predicted))
        metrics["purity"] = sum(max(mix.values()) for mix in summary.label_mix.values()) / len(
            truth
        )
        metrics["label_mix"] = {
            str(c): dict(sorted(mix.items())) for c, mix in sorted(summary.label_mix.items())
        }
    return metrics


def texts_of(shards: EmbeddingShards, wanted: dict[int, list[int]]) -> dict[tuple[int, int], str]:
    """Texts of (shard, row) pairs, read from the dataset shards the embeddings came from."""
    texts = {}
    for index, rows in wanted.items():
        ids = read_embeddings([shards.files[index]])[0]["id"]
        source = pl.read_parquet(shards.dataset_shards[index], columns=["id", "text"])
        by_id = dict(zip(source["id"].to_list(), source["text"].to_list(), strict=True))
        for row in rows:
            texts[(index, row)] = by_id.get(ids[row]) or ""
    return texts
