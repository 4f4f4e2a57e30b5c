"""Ingest: read a raw corpus (Parquet/CSV/JSONL, plain text or RFC 822 mail), validate it, and write
the dataset as zstd Parquet shards with `id`, `text`, `label`, `split` and passthrough columns.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fsspec
import polars as pl

from penultimate.artifacts import ArtifactRef, ArtifactStore, Manifest
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
        return _read_jsonl(file, data)
    except IngestError:
        raise
    except Exception as error:
        raise IngestError(f"{file}: cannot read as {fmt}: {error}") from None


def _read_jsonl(file: str, data: bytes) -> pl.DataFrame:
    try:
        return pl.read_ndjson(data)
    except pl.exceptions.PolarsError:
        # polars names a byte offset at best: find the first line that is not JSON, by number.
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as error:
                    raise IngestError(
                        f"{file}: line {number} is not valid JSON: {error.msg} "
                        f"(column {error.colno})"
                    ) from None
        raise


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
        text_type = frame.schema[config.text_column]
        if text_type not in (pl.String, pl.Binary, pl.Null):
            raise IngestError(
                f"{file}: text column {config.text_column!r} holds {text_type}, not text; "
                "name the column that holds the texts (`text_column`)"
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


# A class needs a row in each of train, val and test; smaller classes go to train and are named.
MIN_STRATIFIED_ROWS = 3


def _hash_position(row_id: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}\x1f{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_quotas(rows: int, ratios: Mapping[str, float]) -> dict[str, int]:
    """Rows per split for a class of `rows`: the ratios rounded by largest remainder, every split
    with a positive ratio given at least one row (classes of >= MIN_STRATIFIED_ROWS); a smaller
    class goes whole to the split with the largest ratio (train by default)."""
    positive = [split for split in SPLITS if ratios[split] > 0]
    if rows < max(MIN_STRATIFIED_ROWS, len(positive)):
        return {split: rows if split == max(SPLITS, key=ratios.get) else 0 for split in SPLITS}
    ideal = {split: rows * ratios[split] for split in SPLITS}
    quotas = {split: max(1, int(ideal[split])) if split in positive else 0 for split in SPLITS}
    while sum(quotas.values()) < rows:
        grow = max(positive, key=lambda split: ideal[split] - quotas[split])
        quotas[grow] += 1
    while sum(quotas.values()) > rows:
        shrink = min(
            (split for split in positive if quotas[split] > 1),
            key=lambda split: ideal[split] - quotas[split],
        )
        quotas[shrink] -= 1
    return quotas


def split_of(
    ids: pl.Series, ratios: Mapping[str, float], salt: str, labels: pl.Series | None = None
) -> pl.Series:
    """train/val/test, reproducible on every machine: drawn from a sha256 of salt + id.

    Unlabelled rows are placed one by one (the same id lands in the same split everywhere).
    Labelled rows are stratified: within each label, rows ordered by that hash fill the label's
    `split_quotas`, so every class of >= MIN_STRATIFIED_ROWS rows is in every split.
    """
    positions = [_hash_position(row_id, salt) for row_id in ids]
    if labels is None:
        cut_train, cut_val = ratios["train"], ratios["train"] + ratios["val"]
        drawn = ["train" if u < cut_train else "val" if u < cut_val else "test" for u in positions]
        return pl.Series("split", drawn, dtype=pl.String)
    order = pl.DataFrame({"label": labels, "u": positions}).with_row_index("row")
    order = order.sort(["label", "u"]).with_columns(
        pl.int_range(pl.len()).over("label").alias("rank"), pl.len().over("label").alias("n")
    )
    drawn = [""] * len(ids)
    quotas: dict[int, dict[str, int]] = {}
    for row, rank, n in order.select("row", "rank", "n").iter_rows():
        quota = quotas.setdefault(n, split_quotas(n, ratios))
        drawn[row] = (
            "train"
            if rank < quota["train"]
            else ("val" if rank < quota["train"] + quota["val"] else "test")
        )
    return pl.Series("split", drawn, dtype=pl.String)


def small_classes(labels: pl.Series) -> dict[str, int]:
    """Labels with fewer rows than a stratified split needs (they are in train only)."""
    counts = labels.value_counts().filter(pl.col("count") < MIN_STRATIFIED_ROWS)
    return dict(sorted((str(label), int(n)) for label, n in counts.iter_rows()))


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
                "set empty_text: drop to skip them or keep to embed them"
            )
        if config.empty_text == EmptyTextPolicy.keep:
            frame = frame.with_columns(pl.col("text").fill_null(""))
        else:
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
            f"source {config.source}: {int(duplicated.sum())} rows share an id with another row "
            f"(column {config.id_column!r}); examples: {examples.to_list()}"
        )
    if frame.height == 0:
        raise IngestError(f"source {config.source!r}: no usable rows (dropped: {dropped})")

    labels = frame["label"] if "label" in frame.columns else None
    frame = frame.with_columns(
        split_of(frame["id"], config.split.model_dump(), config.split_salt, labels)
    )
    counts: dict[str, Any] = {"dropped": dropped, **decode_counts}
    if labels is not None:
        counts["small_classes"] = small_classes(labels)
    return frame, counts


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


def check_splits(manifest: Manifest, splits: Sequence[str] | None, uri: str) -> None:
    """Before any work: the splits asked for hold rows in this dataset."""
    if splits is None:
        return
    rows = manifest.metrics["rows_per_split"]
    if not sum(rows.get(split, 0) for split in splits):
        held = ", ".join(f"{split} {n}" for split, n in rows.items())
        raise InputError(f"{uri}: splits {list(splits)} hold no rows (rows per split: {held})")


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
