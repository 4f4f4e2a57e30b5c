"""Ingest: read a raw corpus (Parquet/CSV/JSONL, plain text or RFC 822 mail), validate it, and write
the dataset as zstd Parquet shards with `id`, `text`, `label`, `split` and passthrough columns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import polars as pl

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import EmptyTextPolicy, FileFormat, IngestConfig, TextFormat
from penultimate.email_text import email_to_text
from penultimate.errors import InputError

DATA_DIR = "data"
SPLITS = ("train", "val", "test")
_SUFFIXES = {
    ".parquet": FileFormat.parquet,
    ".csv": FileFormat.csv,
    ".jsonl": FileFormat.jsonl,
    ".ndjson": FileFormat.jsonl,
}
_DUPLICATE_EXAMPLES = 5


class IngestError(InputError):
    """Input that cannot become a dataset; the message names the file, column or rows at fault."""


def list_source_files(source: str, file_format: FileFormat) -> list[str]:
    """The files a source names: itself, or the matching files under a folder, sorted."""
    fs, path = fsspec.core.url_to_fs(source)
    if not fs.exists(path):
        raise IngestError(f"source {source!r} does not exist")
    if not fs.isdir(path):
        return [fs.unstrip_protocol(path) if "://" in source else path]
    wanted = (
        set(_SUFFIXES)
        if file_format == FileFormat.auto
        else {s for s, f in _SUFFIXES.items() if f == file_format}
    )
    files = sorted(p for p in fs.find(path) if Path(p).suffix.lower() in wanted)
    if not files:
        raise IngestError(f"source folder {source!r} holds no {sorted(wanted)} files")
    return [fs.unstrip_protocol(p) if "://" in source else p for p in files]


def source_fingerprint(config: IngestConfig) -> list[dict[str, Any]]:
    """Each source file's path, size and modification stamp, so an edited source gets a new key."""
    fs, _ = fsspec.core.url_to_fs(config.source)
    stamps = []
    for file in list_source_files(config.source, FileFormat(config.format)):
        info = fs.info(file)
        stamp = (
            info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("etag")
        )
        stamps.append({"file": file, "size": int(info["size"]), "stamp": str(stamp)})
    return stamps


def _format_of(file: str, file_format: FileFormat) -> FileFormat:
    if file_format != FileFormat.auto:
        return file_format
    suffix = Path(file).suffix.lower()
    if suffix not in _SUFFIXES:
        raise IngestError(f"{file}: cannot infer the format from suffix {suffix!r}; set `format`")
    return _SUFFIXES[suffix]


def _read_file(file: str, file_format: FileFormat) -> pl.DataFrame:
    fmt = _format_of(file, file_format)
    try:
        with fsspec.open(file, "rb") as handle:
            data = handle.read()
        if fmt == FileFormat.parquet:
            return pl.read_parquet(data)
        if fmt == FileFormat.csv:
            # Undecodable bytes become U+FFFD (counted later) instead of failing the whole file.
            return pl.read_csv(data, encoding="utf8-lossy", infer_schema=False)
        return pl.read_ndjson(data)
    except Exception as error:
        raise IngestError(f"{file}: cannot read as {fmt}: {error}") from None


def read_source(config: IngestConfig) -> pl.DataFrame:
    """All source rows with columns renamed to `id`, `text`, `label` plus passthrough ones."""
    wanted = {config.id_column: "id", config.text_column: "text"}
    if config.label_column is not None:
        wanted[config.label_column] = "label"
    wanted.update({c: c for c in config.passthrough_columns})
    frames = []
    for file in list_source_files(config.source, FileFormat(config.format)):
        frame = _read_file(file, FileFormat(config.format))
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise IngestError(
                f"{file}: column(s) {missing} not found; the file has columns {frame.columns}"
            )
        frames.append(
            frame.select(
                pl.col(source).cast(pl.String).alias(target)
                if target in ("id", "label")
                else pl.col(source).alias(target)
                for source, target in wanted.items()
            )
        )
    try:
        return pl.concat(frames, how="vertical_relaxed")
    except pl.exceptions.PolarsError as error:
        raise IngestError(
            f"source {config.source!r}: files disagree on column types: {error}"
        ) from None


def _decode_text(texts: pl.Series) -> tuple[pl.Series, int]:
    """Text as str; binary values decoded as UTF-8 with replacement, counting replaced chars."""
    if texts.dtype == pl.Binary:
        decoded = [None if b is None else b.decode("utf-8", errors="replace") for b in texts]
        series = pl.Series("text", decoded, dtype=pl.String)
        return series, int(series.str.count_matches("\ufffd", literal=True).sum() or 0)
    series = texts.cast(pl.String)
    return series, int(series.str.count_matches("\ufffd", literal=True).sum() or 0)


def _emails_to_text(raw: pl.Series) -> tuple[pl.Series, dict[str, int]]:
    texts: list[str | None] = []
    replaced = attachments = 0
    for message in raw:
        if message is None:
            texts.append(None)
            continue
        parsed = email_to_text(message)
        texts.append(parsed.text)
        replaced += parsed.replaced_chars
        attachments += parsed.dropped_attachments
    counts = {"replaced_chars": replaced, "dropped_attachments": attachments}
    return pl.Series("text", texts, dtype=pl.String), counts


def split_of(ids: pl.Series, ratios: Mapping[str, float], salt: str) -> pl.Series:
    """train/val/test from a sha256 of salt + id: the same id lands in the same split everywhere."""
    cut_train, cut_val = ratios["train"], ratios["train"] + ratios["val"]

    def draw(row_id: str) -> str:
        digest = hashlib.sha256(f"{salt}\x1f{row_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        return "train" if u < cut_train else "val" if u < cut_val else "test"

    return pl.Series("split", [draw(i) for i in ids], dtype=pl.String)


def prepare_dataset(config: IngestConfig) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Read, parse, validate and split the source; returns the rows and the drop/decode counts."""
    frame = read_source(config)
    dropped: dict[str, int] = {}
    if config.text_format == TextFormat.email:
        text, decode_counts = _emails_to_text(_decode_text(frame["text"])[0])
    else:
        text, replaced = _decode_text(frame["text"])
        decode_counts = {"replaced_chars": replaced}
    frame = frame.with_columns(text.str.slice(0, config.max_text_chars).alias("text"))

    null_ids = frame["id"].is_null()
    if null_ids.any():
        dropped["null_id"] = int(null_ids.sum())
        frame = frame.filter(~null_ids)
    empty = frame["text"].is_null() | (frame["text"].str.strip_chars().str.len_chars() == 0)
    if empty.any():
        if config.empty_text == EmptyTextPolicy.error:
            examples = frame.filter(empty)["id"].head(_DUPLICATE_EXAMPLES).to_list()
            raise IngestError(
                f"{int(empty.sum())} row(s) have null or empty text (ids {examples}); "
                "set empty_text: drop to skip them"
            )
        dropped["empty_text"] = int(empty.sum())
        frame = frame.filter(~empty)
    if "label" in frame.columns:
        null_labels = frame["label"].is_null()
        if null_labels.any():
            dropped["null_label"] = int(null_labels.sum())
            frame = frame.filter(~null_labels)

    duplicated = frame["id"].is_duplicated()
    if duplicated.any():
        examples = (
            frame.filter(duplicated)["id"].unique(maintain_order=True).head(_DUPLICATE_EXAMPLES)
        )
        raise IngestError(
            f"{int(duplicated.sum())} rows share an id with another row; examples: "
            f"{examples.to_list()}"
        )
    if frame.height == 0:
        raise IngestError(f"source {config.source!r}: no usable rows (dropped: {dropped})")

    frame = frame.with_columns(split_of(frame["id"], config.split.model_dump(), config.split_salt))
    return frame, {"dropped": dropped, **decode_counts}


def write_dataset(
    frame: pl.DataFrame, counts: Mapping[str, Any], out: Path, shard_rows: int
) -> dict:
    """Write zstd Parquet shards into `out/data/` and return the manifest metrics."""
    (out / DATA_DIR).mkdir()
    shards = []
    for index, start in enumerate(range(0, frame.height, shard_rows)):
        shard = frame.slice(start, shard_rows)
        name = f"{DATA_DIR}/part-{index:05d}.parquet"
        shard.write_parquet(out / name, compression="zstd")
        shards.append({"file": name, "rows": shard.height, **_split_counts(shard)})
    lengths = frame["text"].str.len_chars()
    metrics: dict[str, Any] = {
        "rows": frame.height,
        "rows_per_split": _split_counts(frame),
        "shards": shards,
        "columns": frame.columns,
        "text_chars_quantiles": {
            f"p{int(q * 100)}": int(lengths.quantile(q, "nearest") or 0)
            for q in (0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
        },
        **counts,
    }
    if "label" in frame.columns:
        metrics["label_counts_per_split"] = label_counts_per_split(frame)
    return metrics


def label_counts_per_split(frame: pl.DataFrame) -> dict[str, dict[str, int]]:
    """split -> label -> rows, for every split (a split without rows maps to {})."""
    return {
        split: dict(
            sorted(frame.filter(pl.col("split") == split)["label"].value_counts().iter_rows())
        )
        for split in SPLITS
    }


def _split_counts(frame: pl.DataFrame) -> dict[str, int]:
    counts = dict(frame["split"].value_counts().iter_rows())
    return {split: int(counts.get(split, 0)) for split in SPLITS}


def dataset_shards(ref: ArtifactRef) -> list[Path]:
    """The Parquet shard files of a dataset artifact, in order."""
    return sorted((ref.path / DATA_DIR).glob("part-*.parquet"))


def read_dataset(ref: ArtifactRef, split: str | None = None) -> pl.DataFrame:
    """All rows of a dataset artifact (optionally one split)."""
    frame = pl.read_parquet(dataset_shards(ref))
    return frame if split is None else frame.filter(pl.col("split") == split)


def dataset_shard_entries(store: ArtifactStore, dataset: ArtifactRef) -> list[tuple[str, str]]:
    """(path, sha256) of each shard of a dataset artifact, in order, from its manifest alone: a
    damaged shard fails the task that reads it, naming the file, while the other shards go on."""
    manifest = store.read_manifest(dataset)
    if manifest is None:
        raise InputError(f"dataset {dataset.uri} is not a complete artifact")
    return [
        (str(dataset.path / entry.path), entry.sha256)
        for entry in manifest.files
        if entry.path.startswith(f"{DATA_DIR}/")
    ]


def held_out_texts(ref: ArtifactRef, count: int) -> list[str]:
    """The first `count` texts outside the train split, reading only as many shards as needed."""
    texts: list[str] = []
    for shard in dataset_shards(ref):
        frame = pl.read_parquet(shard, columns=["text", "split"])
        texts += frame.filter(pl.col("split") != "train")["text"].head(count - len(texts)).to_list()
        if len(texts) >= count:
            break
    return texts
