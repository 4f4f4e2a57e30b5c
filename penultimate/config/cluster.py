"""The cluster stage's config: algorithm, k, projection for the 2-D maps, and the sample sizes
that keep every step bounded in memory."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import Field, model_validator

from penultimate.config.base import _Config


class ClusterAlgorithm(StrEnum):
    kmeans = "kmeans"
    minibatch_kmeans = "minibatch_kmeans"
    hdbscan = "hdbscan"
    agglomerative = "agglomerative"


class Projection(StrEnum):
    pca = "pca"
    umap = "umap"
    tsne = "tsne"


class ClusterConfig(_Config):
    """Clusters, quality metrics, 2-D maps and a report for an embeddings artifact."""

    embeddings: str | None = Field(
        None,
        description="Embeddings artifact folder; None = the one the pipeline just made (the "
        "`cluster` flow: the store's newest).",
    )
    algorithm: ClusterAlgorithm = Field(
        ClusterAlgorithm.kmeans,
        description="kmeans, minibatch_kmeans (streams every point), hdbscan (noise = cluster -1) "
        "or agglomerative.",
    )
    k: int | None = Field(
        2, ge=2, le=1000, description="Clusters for kmeans, minibatch_kmeans, agglomerative."
    )
    k_range: tuple[int, int] | None = Field(
        None, description="[lowest, highest] k to try; the best silhouette wins (replaces k)."
    )
    min_cluster_size: int = Field(15, ge=2, description="hdbscan: smallest cluster; rest = noise.")
    reduce_to: int | None = Field(
        None, ge=2, le=4096, description="PCA to this many dimensions before clustering."
    )
    projection: Projection = Field(Projection.pca, description="How the 2-D maps are made.")
    projection_sample: int = Field(
        5000, ge=100, description="umap/tsne fit on at most this many points (pca: all)."
    )
    fit_sample: int = Field(
        50_000,
        ge=100,
        description="kmeans/hdbscan/agglomerative fit on at most this many points and assign the "
        "rest in a streaming pass; minibatch_kmeans streams every point.",
    )
    metrics_sample: int = Field(
        5000, ge=100, description="Silhouette, Davies-Bouldin, Calinski-Harabasz sample size."
    )
    top_terms: int = Field(10, ge=1, le=100, description="Distinctive terms per cluster.")
    seed: int = Field(0, description="Seeds every random choice: samples, initialisation, maps.")

    @model_validator(mode="after")
    def _k_and_sample_sizes_agree(self) -> Self:
        if self.k_range is not None:
            low, high = self.k_range
            if not 2 <= low <= high <= 1000:
                raise ValueError("k_range: need 2 <= lowest <= highest <= 1000")
            if self.algorithm == ClusterAlgorithm.hdbscan:
                raise ValueError("k_range: hdbscan finds its own number of clusters")
        elif self.k is None and self.algorithm != ClusterAlgorithm.hdbscan:
            raise ValueError(f"k: {self.algorithm} needs k (or k_range)")
        most_clusters = self.k_range[1] if self.k_range is not None else self.k
        if most_clusters is not None and most_clusters > self.fit_sample:
            raise ValueError(f"k: {most_clusters} clusters, but fit_sample is {self.fit_sample}")
        if self.reduce_to is not None and self.reduce_to > self.fit_sample:
            raise ValueError(f"reduce_to: {self.reduce_to} exceeds fit_sample {self.fit_sample}")
        return self
