"""The ingest flow against a real Prefect server: caching on the artifact key, recompute when the
artifact is gone or damaged, and the CLI's contract (URI last, clear errors)."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from conftest import run_cli, task_run_states
from flows.ingest import ingest
from penultimate.artifacts import ArtifactStore
from penultimate.config import IngestConfig

pytestmark = pytest.mark.usefixtures("prefect_api")


def email_config(source: Path, **overrides: object) -> IngestConfig:
    return IngestConfig.model_validate(
        {"source": str(source), "text_format": "email", "text_column": "raw", **overrides}
    )


def run(config: IngestConfig, store_root: str) -> tuple[object, str]:
    state = ingest(config=config, store_root=store_root, return_state=True)
    assert state.is_completed(), state.message
    return state.result(), task_run_states(state)["ingest-dataset"]


def stamp(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p), p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_rerun_is_cached_and_leaves_artifact_untouched(corpus_slice: Path, store_root: str) -> None:
    config = email_config(corpus_slice)
    ref, first_state = run(config, store_root)
    assert first_state == "Completed"
    before = stamp(ref.path)
    again, second_state = run(config, store_root)
    assert second_state == "Cached"
    assert again == ref
    assert stamp(ref.path) == before


def test_config_change_gives_a_new_artifact(corpus_slice: Path, store_root: str) -> None:
    ref, _ = run(email_config(corpus_slice), store_root)
    other, state = run(email_config(corpus_slice, shard_rows=50), store_root)
    assert state == "Completed"
    assert other.key != ref.key
    assert ArtifactStore(store_root).artifacts("dataset") == sorted(
        [ref, other], key=lambda r: r.key
    )


def test_edited_source_gives_a_new_artifact(
    corpus_slice: Path, tmp_path: Path, store_root: str
) -> None:
    source = tmp_path / "copy.parquet"
    shutil.copy(corpus_slice, source)
    ref, _ = run(email_config(source), store_root)
    pl.read_parquet(source).head(100).write_parquet(source)
    other, state = run(email_config(source), store_root)
    assert state == "Completed"
    assert other.key != ref.key


@pytest.mark.parametrize("damage", ["delete_folder", "corrupt_shard"])
def test_missing_or_damaged_artifact_is_recomputed(
    corpus_slice: Path, store_root: str, damage: str
) -> None:
    config = email_config(corpus_slice)
    ref, _ = run(config, store_root)
    if damage == "delete_folder":
        shutil.rmtree(ref.path)
    else:
        shard = next((ref.path / "data").glob("*.parquet"))
        shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    again, state = run(config, store_root)
    assert state == "Completed"
    assert again == ref
    assert ArtifactStore(store_root).validate(ref) is not None


def test_cli_prints_the_artifact_uri_last(
    corpus_slice: Path, tmp_path: Path, store_root: str
) -> None:
    config_file = tmp_path / "ingest.yaml"
    config_file.write_text(f"source: {corpus_slice}\ntext_format: email\ntext_column: raw\n")
    result = run_cli("--store", store_root, "ingest", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    uri = result.stdout.strip().splitlines()[-1]
    assert Path(uri).parent == Path(store_root).resolve() / "dataset"
    assert ArtifactStore(store_root).validate(ArtifactStore(store_root).artifacts("dataset")[0])


def test_cli_bad_config_names_file_and_field(tmp_path: Path, store_root: str) -> None:
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("source: x.parquet\nshard_rows: -3\n")
    result = run_cli("--store", store_root, "ingest", "--config", str(config_file))
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr and "shard_rows" in result.stderr
