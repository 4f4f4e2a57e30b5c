"""The embeddings artifact on disk: the Parquet layout of its shards, read back as rows and a matrix
(`load_embeddings`, with texts and cluster assignments on request). TensorFlow-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from penultimate.artifacts import ArtifactRef, ArtifactStore, Manifest, StoredRef, open_artifact
from penultimate.errors import InputError
from penultimate.ingest import dataset_shards
from penultimate.stages import (
    ASSIGNMENTS_DIR,
    CLUSTERS_STAGE,
    DATASET_STAGE,
    EMBEDDING_SHARD_STAGE,
    EMBEDDINGS_STAGE,
)

SHARD_FILE = "embeddings.parquet"
# Dataset columns an embedding shard does not carry over: the text stays in the dataset (read it
# with `load_embeddings(..., text=True)`); every other column (label, split, passthrough) is kept.
NOT_PASSED_THROUGH = ("id", "text")


def embeddings_table(frame: pl.DataFrame, vectors: np.ndarray, dtype: str) -> pa.Table:
    """`id`, `embedding` (Arrow fixed-size list) and every other column of the dataset rows but
    the text (label, split, passthrough columns), in shard order."""
    if not np.isfinite(vectors).all():
        bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
        raise ValueError(f"non-finite embedding for id {frame['id'][bad]!r}")
    values = pa.array(vectors.astype(dtype).ravel())
    columns = {
        "id": frame["id"].to_arrow(),
        "embedding": pa.FixedSizeListArray.from_arrays(values, vectors.shape[1]),
    }
    columns.update({c: frame[c].to_arrow() for c in frame.columns if c not in NOT_PASSED_THROUGH})
    return pa.table(columns)


def read_embeddings(files: Sequence[Path]) -> tuple[pl.DataFrame, np.ndarray]:
    """Rows (id and passthrough columns) and the [n, dim] matrix of embedding shard files, without
    copying the vectors again."""
    table = pa.concat_tables([pq.read_table(f) for f in files]).combine_chunks()
    column = table.column("embedding").chunk(0)
    matrix = column.values.to_numpy(zero_copy_only=True).reshape(len(column), column.type.list_size)
    return pl.from_arrow(table.drop(["embedding"])), matrix  # type: ignore[return-value]


def embedding_shard_files(embeddings: ArtifactRef, manifest: Manifest) -> list[Path]:
    """The Parquet files of an embeddings artifact's shards (its manifest names them by key)."""
    root = embeddings.path.parent.parent
    return [
        root / EMBEDDING_SHARD_STAGE.name / s["key"] / SHARD_FILE
        for s in manifest.metrics["shards"]
    ]


def load_embeddings(
    uri: str | Path, text: bool = False, clusters: str | Path | None = None
) -> tuple[pl.DataFrame, np.ndarray]:
    """An embeddings artifact as rows and a matrix, in the shards' order.

    Args:
        uri: the embeddings artifact folder (what `penultimate embed` prints).
        text: add a `text` column, read from the dataset artifact the embeddings came from.
        clusters: a clusters artifact folder made from these embeddings: adds its `cluster`
            column (-1 is hdbscan's noise).

    Returns:
        `id` and every column the shards hold (`label`, `split`, passthrough columns such as
        `group`), plus `text` and `cluster` when asked for; and the [rows, dim] matrix in the
        stored dtype (float32 or float16).

    Raises:
        InputError: not an embeddings folder, a shard or the dataset missing, or clusters of
            other embeddings.

    Example:
        >>> rows, vectors = load_embeddings("artifacts/embeddings/<key>", text=True)
        >>> rows.columns, vectors.shape  # ['id', 'label', 'split', 'group', 'text'], (6046, 256)
    """
    ref = open_artifact(uri, EMBEDDINGS_STAGE.name)
    store = ArtifactStore(ref.path.parent.parent)
    manifest = store.read_manifest(ref)
    assert manifest is not None  # open_artifact checked it
    files = []
    for file, shard in zip(
        embedding_shard_files(ref, manifest), manifest.metrics["shards"], strict=True
    ):
        if store.read_manifest(store.ref(EMBEDDING_SHARD_STAGE, shard["key"])) is None:
            raise InputError(f"{uri}: its embedding shard {file.parent} is missing or incomplete")
        if shard["rows"]:  # an empty shard's file has no embedding column to concatenate
            files.append(file)
    if files:
        rows, matrix = read_embeddings(files)
    else:
        rows, matrix = pl.DataFrame({"id": []}, {"id": pl.String}), np.zeros((0, 0), np.float32)
    if text:
        rows = rows.with_columns(_texts(store, manifest, rows["id"], uri))
    if clusters is not None:
        rows = rows.with_columns(_cluster_column(clusters, ref, rows["id"], uri))
    return rows, matrix


def _texts(store: ArtifactStore, manifest: Manifest, ids: pl.Series, uri: str | Path) -> pl.Series:
    """The text of each id, from the dataset artifact among the embeddings' inputs."""
    stored = next((i for i in manifest.inputs if i.stage == DATASET_STAGE.name), None)
    dataset = store.resolve(stored) if stored is not None else None
    if dataset is None or store.read_manifest(dataset) is None:
        where = f"dataset {dataset.uri}" if dataset is not None else "no dataset among its inputs"
        raise InputError(f"{uri}: cannot read the texts: {where} is missing")
    texts = pl.concat([pl.read_parquet(f, columns=["id", "text"]) for f in dataset_shards(dataset)])
    joined = pl.DataFrame({"id": ids}).join(texts, on="id", how="left", maintain_order="left")
    missing = joined.filter(pl.col("text").is_null())["id"]
    if len(missing):
        raise InputError(
            f"{uri}: {len(missing)} id(s) are not in dataset {dataset.uri}, e.g. {missing[0]!r}"
        )
    return joined["text"]


def _cluster_column(
    clusters: str | Path, embeddings: ArtifactRef, ids: pl.Series, uri: str | Path
) -> pl.Series:
    """The cluster of each id, from a clusters artifact that must have been made from these
    embeddings (its assignments hold every point, in the shards' order)."""
    ref = open_artifact(clusters, CLUSTERS_STAGE.name)
    manifest = ArtifactStore(ref.path.parent.parent).read_manifest(ref)
    assert manifest is not None  # open_artifact checked it
    if StoredRef.of(embeddings) not in manifest.inputs:
        made_from = [i.key for i in manifest.inputs if i.stage == EMBEDDINGS_STAGE.name]
        raise InputError(
            f"{clusters}: clusters of embeddings {', '.join(made_from) or '(none)'}, not of {uri}"
        )
    parts = sorted((ref.path / ASSIGNMENTS_DIR).glob("part-*.parquet"))
    assigned = pl.concat([pl.read_parquet(p, columns=["id", "cluster"]) for p in parts])
    if assigned["id"].to_list() != ids.to_list():
        raise InputError(f"{clusters}: its assignments do not list the ids of {uri} in order")
    return assigned["cluster"]
