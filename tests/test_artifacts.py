"""Artifact store: content keys, manifests with checksums, atomic publish, kill-safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from penultimate.artifacts import ArtifactRef, ArtifactStore, Stage, artifact_key, open_artifact
from penultimate.errors import InputError

STAGE = Stage("demo", "1")


def write_two_files(folder: Path) -> dict[str, int]:
    (folder / "a.txt").write_text("alpha")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.bin").write_bytes(b"\x00" * 100)
    return {"files": 2}


def test_key_is_stable_and_changes_with_config_code_and_inputs() -> None:
    upstream = ArtifactRef(stage="dataset", key="abc", uri="/x/dataset/abc")
    key = artifact_key(STAGE, {"rate": 0.1, "layers": [1, 2]}, [upstream])
    assert key == artifact_key(STAGE, {"layers": [1, 2], "rate": 0.1}, [upstream])
    assert key != artifact_key(STAGE, {"rate": 0.2, "layers": [1, 2]}, [upstream])
    assert key != artifact_key(Stage("demo", "2"), {"rate": 0.1, "layers": [1, 2]}, [upstream])
    other = ArtifactRef(stage="dataset", key="abd", uri="/x/dataset/abd")
    assert key != artifact_key(STAGE, {"rate": 0.1, "layers": [1, 2]}, [other])


def test_publish_writes_manifest_with_checksums(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    ref, published = store.publish(STAGE, {"n": 1}, write_two_files)
    manifest = store.validate(ref)
    assert manifest is not None and manifest == published
    assert manifest.metrics == {"files": 2}
    assert manifest.config == {"n": 1}
    assert {f.path: f.size for f in manifest.files} == {"a.txt": 5, "sub/b.bin": 100}
    assert store.artifacts(STAGE) == [ref]
    assert not [p for p in (tmp_path / "demo").iterdir() if p.name.startswith(".")]


def test_an_input_is_named_by_its_folder_or_defaults_to_the_newest(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(InputError, match=f"no demo artifact in {tmp_path}: run make-demo first"):
        store.input_artifact(None, STAGE, made_by="make-demo")
    older = store.publish(STAGE, {"n": 1}, write_two_files).ref
    newer = store.publish(STAGE, {"n": 2}, write_two_files).ref
    assert store.input_artifact(None, STAGE, made_by="make-demo") == newer
    # A deployment form or a config file names an artifact by its folder, as one string.
    assert ArtifactRef.model_validate(str(older.path)) == older
    assert ArtifactRef.model_json_schema()["type"] == "string"
    assert store.input_artifact(ArtifactRef.model_validate(str(older.path)), STAGE, "x") == older
    (older.path / "manifest.json").unlink()
    with pytest.raises(InputError, match="not a complete artifact"):
        store.input_artifact(older, STAGE, made_by="make-demo")
    with pytest.raises(InputError, match="a 'demo' artifact folder, expected a 'dataset' one"):
        store.input_artifact(newer, Stage("dataset", "1"), made_by="ingest")
    assert store.input_of(newer, Stage("dataset", "1")) is None


def test_a_model_about_to_be_loaded_is_checked_file_by_file(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    ref = store.publish(STAGE, {"n": 1}, write_two_files).ref
    assert open_artifact(ref.uri, "demo", intact=True) == ref
    (ref.path / "a.txt").write_text("alphA")  # same size: only the checksum tells
    assert open_artifact(ref.uri, "demo") == ref  # the manifest alone does not notice
    with pytest.raises(InputError, match=r"damaged artifact: a\.txt differs from its checksum"):
        open_artifact(ref.uri, "demo", intact=True)
    (ref.path / "a.txt").write_text("alpha")
    (ref.path / "sub" / "b.bin").unlink()
    with pytest.raises(InputError, match=r"damaged artifact: sub/b\.bin is missing"):
        open_artifact(ref.uri, "demo", intact=True)


@pytest.mark.parametrize("damage", ["delete_file", "edit_file", "delete_manifest", "bad_manifest"])
def test_damaged_artifact_is_invalid_and_republished(tmp_path: Path, damage: str) -> None:
    store = ArtifactStore(tmp_path)
    ref = store.publish(STAGE, {"n": 1}, write_two_files).ref
    target = ref.path / "a.txt"
    if damage == "delete_file":
        target.unlink()
    elif damage == "edit_file":
        target.write_text("alphA")  # same size, different bytes: only the checksum notices
    elif damage == "delete_manifest":
        (ref.path / "manifest.json").unlink()
    else:
        (ref.path / "manifest.json").write_text("{not json")
    assert store.validate(ref) is None
    again = store.publish(STAGE, {"n": 1}, write_two_files).ref
    assert again == ref
    assert store.validate(ref) is not None


_SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from penultimate.artifacts import ArtifactStore, Stage

    def write(folder: Path) -> dict:
        with (folder / "big.bin").open("wb") as handle:
            for _ in range(1000):
                handle.write(b"x" * 65536)
                handle.flush()
                print("writing", flush=True)
                time.sleep(0.05)
        return {}

    ArtifactStore(sys.argv[1]).publish(Stage("demo", "1"), {"n": 2}, write)
    """
)


def test_sigkill_while_writing_leaves_nothing_visible_and_rerun_succeeds(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    for _ in range(5):  # let it write a few blocks, then kill it mid-file
        assert process.stdout.readline().strip() == "writing"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)

    ref = store.ref_for(STAGE, {"n": 2})
    assert store.validate(ref) is None
    assert not ref.path.exists()
    assert store.artifacts(STAGE) == []
    leftovers = [p.name for p in (tmp_path / "demo").iterdir()]
    assert leftovers and all(name.startswith(".staging-") for name in leftovers)

    rerun = store.publish(
        STAGE, {"n": 2}, lambda d: {"bytes": (d / "big.bin").write_bytes(b"y")}
    ).ref
    assert rerun == ref
    assert store.validate(ref) is not None
    # The killed writer's staging folder names its pid, which is gone: the next publish swept
    # it at once (not 6 h later), and a live writer's folder stays.
    assert not [p for p in (tmp_path / "demo").iterdir() if p.name.startswith(".")]
    live = tmp_path / "demo" / leftovers[0].replace(f"-{process.pid}-", f"-{os.getpid()}-")
    live.mkdir()
    store.publish(STAGE, {"n": 3}, write_two_files)
    assert live.is_dir()


_BUSY_WRITER = textwrap.dedent(
    """
    import sys
    from penultimate.artifacts import ArtifactStore, Stage

    store, writer = ArtifactStore(sys.argv[1]), sys.argv[2]
    for n in range(150):
        config = {"n": n} if writer == "same keys" else {"writer": writer, "n": n}
        store.publish(Stage("demo", "1"), config, lambda d: {"chars": (d / "n").write_text("n")})
    """
)


@pytest.mark.parametrize("keys", ["own keys", "same keys"])
def test_writers_publishing_side_by_side_do_not_trip_over_each_other(
    tmp_path: Path, keys: str
) -> None:
    # Dask workers publish shard artifacts into one stage folder at the same moment: one
    # writer's staging folder may vanish (moved into place) while another lists the folder, and
    # two runs of one config publish the same keys.
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _BUSY_WRITER,
                str(tmp_path),
                keys if keys == "same keys" else str(w),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    errors = [w.communicate(timeout=300)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0, 0], "\n".join(errors)
    store = ArtifactStore(tmp_path)
    published = store.artifacts(STAGE)
    assert len(published) == (150 if keys == "same keys" else 4 * 150)
    assert all(store.validate(ref) is not None for ref in published)
    assert [p.name for p in (tmp_path / "demo").iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "error",
    [
        # polars' csv and ipc writers: an OSError with no errno, the code only in the text
        OSError("No space left on device (os error 28)"),
        RuntimeError("parquet: underlying IO error: No space left on device (os error 28)"),
        RuntimeError("failed to open source.parquet: Permission denied (os error 13)"),
        RuntimeError("shapes (3,) and (4,) not aligned"),
    ],
)
def test_a_failed_write_publishes_nothing_and_blames_the_store_only_when_its_disk_is_full(
    tmp_path: Path, error: Exception
) -> None:
    """A native writer's "no space" may be about another disk (a temporary folder): while the
    store's own disk has room the error stays as it was. (On a full store it becomes an OSError:
    tests/test_bad_input.py fills a real one.)"""
    store = ArtifactStore(tmp_path)

    def fail(folder: Path) -> None:
        (folder / "part").write_bytes(b"x")
        raise error

    with pytest.raises(type(error)) as raised:
        store.publish(STAGE, {"n": 1}, fail)
    assert raised.value is error
    assert list((tmp_path / STAGE.name).iterdir()) == []
