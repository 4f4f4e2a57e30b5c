"""Ingest library: sources, email parsing into text, splits, shards, and every bad-input error."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from penultimate.artifacts import ArtifactStore
from penultimate.config import IngestConfig
from penultimate.ingest import (
    MIN_STRATIFIED_ROWS,
    IngestError,
    prepare_dataset,
    read_dataset,
    small_classes,
    split_of,
    split_quotas,
    write_dataset,
)
from penultimate.stages import DATASET_STAGE


def plain_config(source: Path, **overrides: object) -> IngestConfig:
    return IngestConfig.model_validate({"source": str(source), **overrides})


def write_parquet(path: Path, rows: dict[str, list]) -> Path:
    pl.DataFrame(rows).write_parquet(path)
    return path


def test_email_corpus_becomes_subject_and_body_text(corpus_slice: Path, tmp_path: Path) -> None:
    config = plain_config(
        corpus_slice,
        text_format="email",
        text_column="raw",
        passthrough_columns=["group"],
        shard_rows=70,
    )
    frame, counts = prepare_dataset(config)
    assert frame.height == 300
    assert frame.columns == ["id", "text", "label", "group", "split"]
    assert not frame["text"].str.contains("(?im)^received: ").any()
    # One spam message in the slice has a broken MIME boundary, so its HTML arrives as text/plain.
    assert frame["text"].str.contains("(?i)<html|<td").sum() <= 1
    assert set(frame["label"]) == {"spam", "ham"}

    store = ArtifactStore(tmp_path)
    ref = store.publish(
        DATASET_STAGE, config, lambda out: write_dataset(frame, counts, out, 70)
    ).ref
    metrics = store.validate(ref).metrics  # type: ignore[union-attr]
    assert [s["rows"] for s in metrics["shards"]] == [70, 70, 70, 70, 20]
    assert sum(metrics["rows_per_split"].values()) == 300
    # Stratified: no class is too small for val and test here, and the manifest says so.
    assert metrics["small_classes"] == {}
    assert metrics["rows_per_split"]["train"] > metrics["rows_per_split"]["test"] > 0
    assert (
        sum(metrics["label_counts_per_split"]["train"].values())
        == metrics["rows_per_split"]["train"]
    )
    assert 0 < metrics["text_chars_quantiles"]["p50"] <= metrics["text_chars_quantiles"]["p100"]
    assert read_dataset(ref).equals(frame)
    assert read_dataset(ref, "test")["split"].unique().to_list() == ["test"]


def test_split_is_a_stable_function_of_id_and_salt() -> None:
    ids = pl.Series([f"doc-{i}" for i in range(20_000)])
    ratios = {"train": 0.8, "val": 0.1, "test": 0.1}
    first = split_of(ids, ratios, "penultimate")
    assert first.equals(split_of(ids.reverse(), ratios, "penultimate").reverse())
    # Pinned values: the same id must land in the same split on every machine and version.
    assert first.head(6).to_list() == PINNED_SPLITS
    shares = first.value_counts(normalize=True).sort("split")
    assert shares["proportion"].to_list() == pytest.approx([0.1, 0.8, 0.1], abs=0.01)
    assert not first.equals(split_of(ids, ratios, "other-salt"))


PINNED_SPLITS = ["train", "train", "train", "train", "test", "train"]


def many_classes() -> tuple[pl.Series, pl.Series]:
    """50 imbalanced classes, as a real many-class corpus has: 1 to 1,000 rows each."""
    sizes = [1, 2, 3, 4, 5, 7, 10, *range(12, 300, 7), 1000]
    labels = [f"class-{c:02d}" for c, size in enumerate(sizes) for _ in range(size)]
    ids = [f"doc-{i}" for i in range(len(labels))]
    return pl.Series(ids), pl.Series(labels)


def test_split_is_stratified_every_class_of_three_rows_in_every_split() -> None:
    ids, labels = many_classes()
    ratios = {"train": 0.8, "val": 0.1, "test": 0.1}
    split = split_of(ids, ratios, "penultimate", labels)
    frame = pl.DataFrame({"id": ids, "label": labels, "split": split})
    per_class = frame.group_by("label").agg(
        pl.len().alias("n"), *(((pl.col("split") == s).sum()).alias(s) for s in ratios)
    )
    big = per_class.filter(pl.col("n") >= MIN_STRATIFIED_ROWS)
    assert big.height == 48
    assert (big.select(pl.min_horizontal(*ratios)) >= 1).to_series().all()
    # A class large enough that no split needs its minimum row gets its ratios, rounded.
    for n, *counts in big.filter(pl.col("n") >= 10).select("n", *ratios).iter_rows():
        for count, ratio in zip(counts, ratios.values(), strict=True):
            assert abs(count - n * ratio) <= 1, (n, counts)
    small = per_class.filter(pl.col("n") < MIN_STRATIFIED_ROWS)
    assert small["train"].to_list() == small["n"].to_list() and small.height == 2
    assert small_classes(labels) == {"class-00": 1, "class-01": 2}
    # Reproducible: row order does not matter, the salt does.
    assert split.equals(split_of(ids.reverse(), ratios, "penultimate", labels.reverse()).reverse())
    assert not split.equals(split_of(ids, ratios, "other-salt", labels))


@pytest.mark.parametrize(
    ("rows", "ratios", "quotas"),
    [
        (3, {"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 1, "val": 1, "test": 1}),
        (10, {"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 8, "val": 1, "test": 1}),
        (25, {"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 20, "val": 3, "test": 2}),
        (5, {"train": 0.0, "val": 0.5, "test": 0.5}, {"train": 0, "val": 3, "test": 2}),
        (4, {"train": 1.0, "val": 0.0, "test": 0.0}, {"train": 4, "val": 0, "test": 0}),
        (2, {"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 2, "val": 0, "test": 0}),
    ],
)
def test_split_quotas_round_to_the_ratios_and_give_every_split_a_row(
    rows: int, ratios: dict[str, float], quotas: dict[str, int]
) -> None:
    assert split_quotas(rows, ratios) == quotas


def test_csv_and_jsonl_folders_with_custom_columns(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "a.csv").write_text("doc,body,y\n1,hello world,pos\n2,good day,neg\n")
    (folder / "b.jsonl").write_text(json.dumps({"doc": "3", "body": "third", "y": "pos"}) + "\n")
    frame, _ = prepare_dataset(
        plain_config(folder, id_column="doc", text_column="body", label_column="y")
    )
    assert sorted(frame["id"].to_list()) == ["1", "2", "3"]
    assert set(frame["label"]) == {"pos", "neg"}


def test_missing_column_names_it_and_lists_existing(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "a.parquet", {"id": ["1"], "body": ["x"]})
    with pytest.raises(IngestError, match=r"a\.parquet.*\['text'\].*\['id', 'body'\]"):
        prepare_dataset(plain_config(source, label_column=None))


def test_empty_text_dropped_and_counted_or_an_error(tmp_path: Path) -> None:
    source = write_parquet(
        tmp_path / "a.parquet",
        {"id": ["1", "2", "3", "4"], "text": ["fine", None, "   ", "ok"], "label": list("abab")},
    )
    frame, counts = prepare_dataset(plain_config(source))
    assert frame["id"].to_list() == ["1", "4"]
    assert counts["dropped"] == {"empty_text": 2}
    with pytest.raises(
        IngestError, match=r"2 row\(s\) have null or empty text \(ids \['2', '3'\]\)"
    ):
        prepare_dataset(plain_config(source, empty_text="error"))
    # An embed-only dataset keeps every row: an empty text is embedded as "" (the parity
    # reference holds sentence-transformers' embedding of "" and of whitespace).
    frame, counts = prepare_dataset(plain_config(source, empty_text="keep"))
    assert frame["text"].to_list() == ["fine", "", "   ", "ok"] and counts["dropped"] == {}


def test_duplicate_ids_are_an_error_with_examples(tmp_path: Path) -> None:
    source = write_parquet(
        tmp_path / "a.parquet", {"id": ["1", "2", "1", "3", "2"], "text": list("abcde")}
    )
    with pytest.raises(IngestError, match=r"4 rows share an id.*\['1', '2'\]"):
        prepare_dataset(plain_config(source, label_column=None))


def test_undecodable_bytes_are_replaced_and_counted(tmp_path: Path) -> None:
    source = tmp_path / "a.csv"
    source.write_bytes(b"id,text\n1,caf\xe9 au lait\n2,fine\n3,\xff\xfe bad\n")
    frame, counts = prepare_dataset(plain_config(source, label_column=None))
    assert frame["text"].to_list() == ["caf\ufffd au lait", "fine", "\ufffd\ufffd bad"]
    assert counts["replaced_chars"] == 3


def test_zero_usable_rows_is_an_error(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "a.parquet", {"id": ["1", "2"], "text": ["", None]})
    with pytest.raises(IngestError, match="no usable rows"):
        prepare_dataset(plain_config(source, label_column=None))


def test_corrupt_or_truncated_file_is_named(tmp_path: Path) -> None:
    good = write_parquet(tmp_path / "good.parquet", {"id": ["1"], "text": ["x"]})
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(IngestError, match=r"truncated\.parquet: cannot read as parquet"):
        prepare_dataset(plain_config(tmp_path, label_column=None))
    garbage = tmp_path / "other" / "garbage.jsonl"
    garbage.parent.mkdir()
    garbage.write_text('{"id": "1", "text": "x"}\n{"id": 2, "te')
    with pytest.raises(IngestError, match=r"garbage\.jsonl: line 2 is not valid JSON"):
        prepare_dataset(plain_config(garbage, label_column=None))


def test_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="does not exist"):
        prepare_dataset(plain_config(tmp_path / "nope.parquet"))


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="split ratios must sum to 1"):
        IngestConfig.model_validate({"source": "x", "split": {"train": 0.9, "val": 0.2, "test": 0}})
    with pytest.raises(ValueError, match="shard_rows"):
        IngestConfig.model_validate({"source": "x", "shard_rows": 0})
    with pytest.raises(ValueError, match="text_colum"):
        IngestConfig.model_validate({"source": "x", "text_colum": "body"})
