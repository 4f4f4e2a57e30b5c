"""Bad input that used to end in a traceback: each is now one `error:` line naming the file, field,
row or path, with exit code 2, before any work starts."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import REPO, prefect_api_call, run_cli
from penultimate.artifacts import ArtifactStore
from penultimate.config import EmbedConfig, IngestConfig, ProbeConfig, TrainConfig, load_config
from penultimate.config.base import ConfigFileError
from penultimate.errors import InputError
from penultimate.ingest import IngestError, check_splits, prepare_dataset, read_source


def one_error_line(result: object) -> str:
    """The `error:` line of a CLI run that must have failed on bad input (exit 2): one such line,
    the last one (a flow's own log lines may come before it), and no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]] and "Traceback" not in result.stderr, lines  # type: ignore[attr-defined]
    return lines[-1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"epochs: 2\nepochs: 3\n",
            "not valid YAML (line 2, column 1): key 'epochs' appears twice",
        ),
        (b"epochs: 2  # caf\xe9\n", "not UTF-8 text (byte 16: 0xe9)"),
        (b"dropout: [{rate: 0.1}\n", "not valid YAML (line 2, column 1): expected ',' or ']'"),
    ],
)
def test_a_config_file_that_is_not_clean_yaml_is_named_with_its_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "train.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigFileError) as raised:
        load_config(TrainConfig, path)
    assert str(raised.value).startswith(f"{path}: ") and message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_store_that_is_a_file_or_refuses_writes_stops_the_command(tmp_path: Path) -> None:
    a_file = tmp_path / "store"
    a_file.write_text("not a folder")
    line = one_error_line(run_cli("--store", str(a_file), "cluster"))
    assert line == f"error: store {a_file}: is a file, not a folder"
    with pytest.raises(InputError, match="is a file, not a folder"):
        ArtifactStore(a_file).check_writable()


def test_an_unreachable_prefect_api_is_named(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        api = f"http://127.0.0.1:{port}/api"
        result = run_cli("--store", str(tmp_path), "cluster", PREFECT_API_URL=api)
    assert f"PREFECT_API_URL={api} does not answer" in one_error_line(result)


def test_unknown_or_empty_splits_are_errors_naming_the_splits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Input should be 'train', 'val' or 'test'"):
        EmbedConfig.model_validate({"splits": ["bogus"]})
    manifest = type("M", (), {"metrics": {"rows_per_split": {"train": 8, "val": 0, "test": 2}}})
    with pytest.raises(InputError, match=r"splits \['val'\] hold no rows .*train 8, val 0"):
        check_splits(manifest, ["val"], "/store/dataset/k")  # type: ignore[arg-type]
    check_splits(manifest, ["val", "test"], "/store/dataset/k")  # type: ignore[arg-type]
    assert ProbeConfig.model_validate({"ingest": {"source": "x"}}).embed_config().splits


def test_a_numeric_text_column_is_an_error_naming_file_and_column(tmp_path: Path) -> None:
    source = tmp_path / "numbers.parquet"
    pl.DataFrame({"id": ["1", "2"], "text": [3, 4], "label": ["a", "b"]}).write_parquet(source)
    with pytest.raises(IngestError, match=f"{source}: text column 'text' holds Int64, not text"):
        read_source(IngestConfig(source=str(source)))


def test_a_broken_jsonl_line_is_named_by_its_number(tmp_path: Path) -> None:
    source = tmp_path / "rows.jsonl"
    lines = [f'{{"id": "{i}", "text": "row {i}", "label": "a"}}' for i in range(60)]
    lines[50] = '{"id": "50", "text": "cut off'
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(IngestError, match=f"{source}: line 51 is not valid JSON"):
        read_source(IngestConfig(source=str(source)))


def test_duplicate_ids_name_the_source_and_the_column(tmp_path: Path) -> None:
    source = tmp_path / "a.parquet"
    pl.DataFrame({"doc": ["1", "1"], "text": ["x", "y"]}).write_parquet(source)
    config = IngestConfig(source=str(source), id_column="doc", label_column=None)
    with pytest.raises(IngestError, match=f"source {source}: 2 rows share an id .*'doc'"):
        prepare_dataset(config)


def test_a_killed_command_run_is_marked_crashed_by_the_next_command(
    prefect_api: str, corpus_path: Path, tmp_path: Path
) -> None:
    config = tmp_path / "ingest.yaml"
    config.write_text(f"source: {corpus_path}\ntext_format: email\ntext_column: raw\n")
    command = [sys.executable, "-m", "penultimate.cli", "--store", str(tmp_path / "store")]
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    killed = subprocess.Popen([*command, "ingest", "--config", str(config)], cwd=REPO, env=env)
    owner = f"pid:{socket.gethostname()}:{killed.pid}"
    body = {"flow_runs": {"tags": {"all_": [owner]}, "state": {"type": {"any_": ["RUNNING"]}}}}
    deadline = time.monotonic() + 120
    while not prefect_api_call(prefect_api, "POST", "/flow_runs/filter", body):
        assert killed.poll() is None and time.monotonic() < deadline, "the ingest never ran"
        time.sleep(0.5)
    killed.send_signal(signal.SIGKILL)  # no chance to report: the run stays Running
    killed.wait()
    one_error_line(
        run_cli("--store", str(tmp_path / "empty"), "cluster", PREFECT_API_URL=prefect_api)
    )
    runs = prefect_api_call(
        prefect_api, "POST", "/flow_runs/filter", {"flow_runs": {"tags": {"all_": [owner]}}}
    )
    assert [run["state_type"] for run in runs] == ["CRASHED"]
    assert "exited without reporting" in runs[0]["state"]["message"]


def in_own_mount(store: Path, mount_options: str, script: str) -> subprocess.CompletedProcess[str]:
    """`script` (sh) with a fresh tmpfs mounted at `store` with `mount_options`, in a private user
    and mount namespace: a real read-only or full file system, without root and without touching
    the machine's mounts (the mount vanishes when the script ends)."""
    namespaces = ["unshare", "--mount", "--map-root-user"]
    if shutil.which("unshare") is None or subprocess.run([*namespaces, "true"]).returncode:
        pytest.skip("no private mount namespace here (unshare missing or user namespaces off)")
    store.mkdir(exist_ok=True)
    cli = f"{sys.executable} -m penultimate.cli --store {store}"
    mount = f"mount -t tmpfs -o {mount_options} tmpfs {store}"
    command = [*namespaces, "sh", "-c", f"{mount} && {script}"]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env={**os.environ, "CLI": cli},
        timeout=600,
    )  # fmt: skip
    return result


POLARS_CSV_ON_FULL_STORE = """
import sys
from pathlib import Path
import polars as pl
from penultimate.artifacts import ArtifactStore, Stage
def write(folder):
    pl.DataFrame({"x": ["y" * 1000] * 1000}).write_csv(folder / "big.csv")
try:
    ArtifactStore(sys.argv[1]).publish(Stage("probe", "1"), {}, write)
except OSError as error:
    print(type(error).__name__, error.errno, error.filename)
"""


def test_a_read_only_store_stops_the_command_before_any_work(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = in_own_mount(store, "ro", "$CLI cluster")
    assert one_error_line(result) == f"error: store {store}: not writable (Read-only file system)"


def test_a_full_store_publishes_nothing_and_a_rerun_after_freeing_space_completes(
    prefect_api: str, corpus_slice: Path, tmp_path: Path
) -> None:
    store, out = tmp_path / "store", tmp_path / "out"
    out.mkdir()
    config = tmp_path / "ingest.yaml"
    config.write_text(f"source: {corpus_slice}\ntext_format: email\ntext_column: raw\n")
    # The shards of 300 mails need about a megabyte: 256 KiB fills up in the middle of the work.
    script = (
        f"$CLI ingest --config {config} 2> {out}/full.err; echo $? > {out}/full.rc; "
        f"find {store} -mindepth 1 > {out}/after-full.txt; "
        # polars' csv writer says it with an errno-less OSError: the store still names it.
        f"{sys.executable} -c '{POLARS_CSV_ON_FULL_STORE}' {store} > {out}/csv.txt; "
        f"mount -o remount,size=64m {store} && "
        f"$CLI ingest --config {config} > {out}/rerun.out 2>&1; echo $? > {out}/rerun.rc; "
        f"cp -a {store}/. {out}/store"
    )
    result = in_own_mount(store, "size=256k", script)
    assert result.returncode == 0, result.stderr
    full = subprocess.CompletedProcess([], int((out / "full.rc").read_text()), "",
                                       (out / "full.err").read_text())  # fmt: skip
    # polars reports the full disk as text ("... (os error 28)"): the store names it as such.
    assert (
        one_error_line(full) == f"error: No space left on device: {store} (nothing was published)"
    )
    assert (out / "csv.txt").read_text().split() == ["OSError", "28", str(store)]
    # Nothing half-written stays behind: no artifact, no staging folder.
    listing = (out / "after-full.txt").read_text()
    assert listing.split() == [f"{store}/dataset"], listing
    assert (out / "rerun.rc").read_text().strip() == "0", (out / "rerun.out").read_text()
    copy = ArtifactStore(out / "store")
    (dataset,) = copy.artifacts("dataset")
    assert copy.validate(dataset) is not None


def test_a_store_that_fills_up_while_dask_workers_embed_is_one_error_line(
    prefect_api: str, corpus_slice: Path, store_with_encoder: str, tmp_path: Path
) -> None:
    """The shards publish on Dask workers: their full-disk failures still end in the store's one
    line, not in a list of failed shards."""
    filled = Path(store_with_encoder)
    mails = tmp_path / "mails.parquet"
    pl.read_parquet(corpus_slice).head(20).write_parquet(mails)
    ingest = tmp_path / "ingest.yaml"
    ingest.write_text(f"source: {mails}\ntext_format: email\ntext_column: raw\n")
    dataset = run_cli("--store", str(filled), "ingest", "--config", str(ingest))
    assert dataset.returncode == 0, dataset.stderr
    store, embed = tmp_path / "full-store", tmp_path / "embed.yaml"
    embed.write_text("runner: {n_workers: 1}\n")
    # The store as copied, plus 8 KiB: room for staging folders, not for 20 x 384 floats.
    script = (
        f"cp -a {filled}/. {store}/ && "
        f"mount -o remount,size=$(( $(du -sk {store} | cut -f1) + 8 ))k {store} && "
        f"$CLI embed --config {embed}"
    )
    result = in_own_mount(store, "size=1g", script)
    assert one_error_line(result) == (
        f"error: No space left on device: {store} (nothing was published)"
    ), result.stderr[-2000:]
