"""Shared test fixtures: a real local Prefect server (with deployments and a worker), the shared
corpus, a built encoder.

The server and the encoder are built once per session; each test gets its own artifact store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import penultimate  # noqa: F401  (selects tf-keras before anything imports TensorFlow)
from encoder_fixtures import LOCK_FILE, publish_minilm_pair, write_tiny_bert_folder

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "data" / "spamassassin.parquet"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# A genuine TF-Hub-format BERT pair, made by TensorFlow Model Garden's exporter
# (tests/fixtures/make_hub_pair.py): 2 blocks, hidden size 64, a 3,000-token vocabulary.
HUB_PAIR = FIXTURES / "hub_pair"


@pytest.fixture(scope="session")
def corpus_path() -> Path:
    if not SHARED_CORPUS.is_file():
        pytest.fail(f"the shared corpus is missing: {SHARED_CORPUS} (see ../shared/data/README.md)")
    return SHARED_CORPUS


@pytest.fixture(scope="session")
def corpus_slice(corpus_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 messages of the real corpus, every group represented, as a Parquet file."""
    frame = pl.read_parquet(corpus_path)
    sample = frame.group_by("group", maintain_order=True).head(60).sort("id")
    path = tmp_path_factory.mktemp("corpus") / "slice.parquet"
    sample.write_parquet(path)
    return path


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `prefect server` (SQLite) for the session, set as this process's API."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    from penultimate.prefect_server import start_local_server, stop_local_server

    home = tmp_path_factory.mktemp("prefect-server")
    api_url = start_local_server(home)
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url  # for subprocesses the tests start
    # Flows called in this process send no heartbeats: each flow run waits up to a second for
    # Prefect's heartbeat thread at its end (see tasks/subflow.py).
    # Runs in subprocesses (the CLI, deployments) keep them.
    settings = {PREFECT_API_URL: api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    try:
        with temporary_settings(updates=settings):
            yield api_url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        stop_local_server(home)


@pytest.fixture
def store_root(tmp_path: Path) -> str:
    return str(tmp_path / "store")


@pytest.fixture(scope="session")
def encoder_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("encoder-store"))


@pytest.fixture
def store_with_encoder(tmp_path: Path, minilm_pair: Path) -> str:
    """A fresh store holding the session's built encoder (copied, so nothing rebuilds it)."""
    root = tmp_path / "store"
    shutil.copytree(minilm_pair, root / minilm_pair.parent.name / minilm_pair.name)
    return str(root)


@pytest.fixture(scope="session")
def minilm_pair(encoder_store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in encoder, built by the library converter (no Prefect server needed) under the
    key the build-encoder task computes, so flows reuse it; built once per test session, in the
    background from the session's start under pytest-xdist (see pytest_sessionstart), else by
    the first test that needs it."""
    session_root = session_shared_root(tmp_path_factory.getbasetemp())
    with (session_root / LOCK_FILE).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ref = publish_minilm_pair(session_root)
    folder = Path(encoder_store) / ref.stage / ref.key
    if not folder.exists():
        shutil.copytree(ref.path, folder)
    return folder


def session_shared_root(basetemp: Path) -> Path:
    """The folder this test session's processes share: an xdist worker's basetemp is
    `<session basetemp>/popen-gwN`."""
    return basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp


def built_once_per_session(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]
) -> Path:
    """`<shared root>/name`, which `build` fills once for all of the session's processes: the
    first to get here builds it in a staging folder and renames it, the others wait."""
    folder = session_shared_root(tmp_path_factory.getbasetemp()) / name
    with folder.with_name(f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.exists():
            staging = folder.with_name(f"{name}.partial")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            build(staging)
            staging.rename(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random BERT of TINY_BERT's shape (3 blocks, hidden size 32), converted by the library's
    `build_encoder_pair` at seq_length 16: for tests of training mechanics, where MiniLM's
    6 blocks of 384 would only make them slower. Its checkpoint folder is `<pair>/../checkpoint`."""
    from penultimate.encoders.bert_convert import build_encoder_pair

    def build(root: Path) -> None:
        checkpoint = write_tiny_bert_folder(root / "checkpoint")
        build_encoder_pair(checkpoint, root / "pair", seq_length=16)

    return built_once_per_session(tmp_path_factory, "tiny-bert", build) / "pair"


@pytest.fixture(scope="session")
def hub_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Model Garden pair of tests/fixtures/hub_pair imported as an encoder artifact folder
    (by the library function, without Prefect), seq_length 64."""
    from penultimate.config import EncoderConfig
    from penultimate.encoders.hub_import import import_hub_pair
    from penultimate.encoders.pair import EncoderPair

    config = EncoderConfig(
        hub_preprocessor=str(HUB_PAIR / "preprocessor"),
        hub_encoder=str(HUB_PAIR / "encoder"),
        seq_length=64,
    )
    return built_once_per_session(
        tmp_path_factory, "hub-pair", lambda folder: import_hub_pair(config, EncoderPair(folder))
    )


# Test kinds, by what they need: `library` (plain functions, layers and models; no services),
# `flow` (a real Prefect server and Dask), `e2e` (deployments, workers, the Prefect UI).
E2E_MODULES = {"test_deployments.py", "test_browser.py"}
FLOW_MODULES = {"test_dask_cluster.py"}
# Modules without a `library` test: `-m library` (make test-fast) does not even import them,
# which spares each worker importing Prefect, the flows and Dask (2 s); every other run checks
# that the list is true.
NO_LIBRARY_TESTS = (
    E2E_MODULES
    | FLOW_MODULES
    | {
        "test_embed_flow.py",
        "test_embed_resilience.py",
        "test_hub_pair.py",
        "test_ingest_flow.py",
        "test_pipeline.py",
        "test_probe.py",
        "test_train_export_flow.py",
    }
)


# With two pytest-xdist workers (`--dist loadgroup`), a module whose tests share module- or
# session-scoped fixtures (a trained classifier, an export, deployments) runs on one worker, so
# those are built once, not once per worker.
SHARED_FIXTURE_GROUPS = {
    "test_train_export_flow.py": "train-export",
    "test_hub_pair.py": "hub-pair",
    "test_embed_flow.py": "embed-flow",
    "test_probe.py": "probe",
    "test_deployments.py": "deployments",
    "test_browser.py": "deployments",
    # One worker loads the pairs and warms up Keras' training step, or MiniLM, not both.
    "test_train.py": "training",
    "test_explain_dropout.py": "training",
    "test_embed.py": "minilm",
    "test_encoder.py": "minilm",
    "test_long_text.py": "minilm",
    "test_preprocessor.py": "minilm",
}
# The slowest modules first (longest-processing-time-first), so both workers finish together
# instead of one running a long test alone at the end; the rest keep their file order.
SLOWEST_FIRST = [
    "test_pipeline.py",
    "test_train_export_flow.py",
    "test_embed_resilience.py",
    "test_hub_pair.py",
    "test_deployments.py",
    "test_browser.py",
    "test_embed_flow.py",
    "test_probe.py",
    "test_train.py",
    "test_explain_dropout.py",
    "test_embed.py",
    "test_encoder.py",
    "test_long_text.py",
    "test_preprocessor.py",
]


# tryfirst: pytest-xdist's worker reads the xdist_group marks in its own modifyitems hook, which
# pluggy would otherwise call before this one (registered later, called first).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {module: position for position, module in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    for item in items:
        module = item.path.name
        if module in SHARED_FIXTURE_GROUPS:
            item.add_marker(pytest.mark.xdist_group(SHARED_FIXTURE_GROUPS[module]))
        if module in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)
        elif module in FLOW_MODULES or {"prefect_api", "dask_cluster"} & set(item.fixturenames):
            item.add_marker(pytest.mark.flow)
        elif module in NO_LIBRARY_TESTS:
            raise pytest.UsageError(f"{item.nodeid} is a library test: take {module} out of "
                                    "NO_LIBRARY_TESTS in tests/conftest.py")  # fmt: skip
        else:
            item.add_marker(pytest.mark.library)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if config.getoption("markexpr") == "library" and collection_path.name in NO_LIBRARY_TESTS:
        return True
    return None  # pytest decides


# Modules whose tests need the built MiniLM pair (by fixture name in their source).
MINILM_FIXTURES = ("minilm_pair", "store_with_encoder")
MINILM_BUILD = pytest.StashKey[subprocess.Popen[bytes]]()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Under pytest-xdist, start building the MiniLM pair in the background before the workers
    start: it overlaps their start-up and collection, and no worker idles waiting for another
    to build it (measured: 17 s of one worker's time in `make test-fast`)."""
    config = session.config
    if not config.pluginmanager.has_plugin("dsession") or not _selected_modules_need_minilm(config):
        return
    session_root = config._tmp_path_factory.getbasetemp()
    lock = (session_root / LOCK_FILE).open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    # The build inherits the locked file and holds the lock until it exits, even if it fails:
    # a fixture then finds no pair and builds it itself, showing the error in its test.
    script = Path(__file__).with_name("encoder_fixtures.py")
    with (session_root / "minilm-build.log").open("w") as log:
        config.stash[MINILM_BUILD] = subprocess.Popen(
            [sys.executable, str(script), str(session_root)],
            stdout=log, stderr=subprocess.STDOUT, pass_fds=(lock.fileno(),),
        )  # fmt: skip
    lock.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    build = session.config.stash.get(MINILM_BUILD, None)
    if build is not None and build.poll() is None:
        build.terminate()
        build.wait()


def _selected_modules_need_minilm(config: pytest.Config) -> bool:
    paths = [Path(arg.split("::")[0]) for arg in config.args] or [Path(__file__).parent]
    modules = [m for p in paths for m in ([p] if p.is_file() else p.rglob("test_*.py"))]
    return any(name in m.read_text() for m in modules for name in MINILM_FIXTURES)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under `--dist loadgroup`, fail if pytest-xdist did not apply the groups: it then spreads a
    group's tests over both workers and each builds the group's classifiers and exports again
    (measured: pytest 9.2.0 with pytest-xdist 3.8.0, whose suffix on the node id is lost)."""
    if not session.config.getoption("loadgroup", False):
        return
    lost = [i.nodeid for i in session.items if i.path.name in SHARED_FIXTURE_GROUPS]
    lost = [nodeid for nodeid in lost if "@" not in nodeid]
    if lost:
        raise pytest.UsageError(f"pytest-xdist ignored the xdist_group of {lost[0]} (and others)")


def task_run_states(flow_state: object, subflows: bool = False) -> dict[str, str]:
    """Task name -> state name of the task runs of a finished flow run (and, with `subflows`, of
    every flow run below it), read from the API."""
    return {name: state for (name, state) in task_state_counts(flow_state, subflows)}


def prefect_artifact_keys(api_url: str) -> set[str]:
    """Keys of the Prefect artifacts the server holds (via the REST API the UI uses)."""
    artifacts = prefect_api_call(
        api_url, "POST", "/artifacts/filter", {"limit": 200, "sort": "CREATED_DESC"}
    )
    return {artifact["key"] for artifact in artifacts if artifact.get("key")}


def task_state_counts(flow_state: object, subflows: bool = False) -> dict[tuple[str, str], int]:
    """(task name, state name) -> how many task runs of the flow run (and, with `subflows`, of
    every flow run below it) ended so."""
    import time
    from collections import Counter

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    from tasks.subflow import subflow_runs

    root = flow_state.state_details.flow_run_id  # type: ignore[attr-defined]
    with get_client(sync_client=True) as client:
        below = subflow_runs(client, root) if subflows else []
        flow_run_ids = [root] + [run.id for level in below for run in level]
        # The server records task-run states from the client's events asynchronously, so a
        # flow that just returned may still show a task Running: read until every one is final.
        deadline = time.monotonic() + 30
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                limit=200,
            )
            settled = all(run.state and run.state.type.value in _FINAL_STATE_TYPES for run in runs)
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    return dict(Counter((run.name.rsplit("-", 1)[0], run.state.name) for run in runs))


@contextlib.contextmanager
def dask_cluster_processes(workers: int) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A real `dask scheduler` and `workers` single-threaded `dask worker` processes (no nanny, so
    a killed worker stays dead) on 127.0.0.1; yields the address and the worker processes."""
    from penultimate.prefect_server import free_port

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    quiet: dict[str, Any] = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], **quiet
    )
    worker = [dask, "worker", address, "--nthreads", "1", "--no-nanny"]
    worker_processes = [
        subprocess.Popen([*worker, "--no-dashboard", "--name", f"worker-{i}"], **quiet)
        for i in range(workers)
    ]
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        yield address, worker_processes
    finally:
        # Workers before the scheduler: a worker whose scheduler is gone keeps retrying instead of
        # exiting, so SIGTERM can leave it hanging; stop_processes kills what outlives its grace.
        stop_processes(worker_processes)
        stop_processes([scheduler])


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[str]:
    """The address of a one-worker cluster shared by every test that only runs work on a cluster:
    it starts and loads each model once a session. One worker, not two: a second one loaded every
    model again on the same two cores. Several workers are tested where they matter, by tests that
    start their own (a killed worker, the local cluster's shard order)."""
    with dask_cluster_processes(1) as (address, _):
        yield address


def stop_processes(processes: list[subprocess.Popen[bytes]], grace_seconds: float = 15) -> None:
    """SIGTERM every process, then SIGKILL those still running after `grace_seconds`."""
    import time

    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`penultimate ARGS` in a fresh interpreter, from the repository root (`env` added)."""
    return subprocess.run(
        [sys.executable, "-m", "penultimate.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        timeout=600,
    )


PROCESS_POOL = "penultimate-process"
_FINAL_STATE_TYPES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def prefect_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`prefect --no-prompt ARGS` from the repository root; fails the test with its output if it
    exits non-zero."""
    # prefect.yaml's `{{ $PWD }}` is read from the environment, so it must name the cwd.
    env = {**os.environ, "PWD": str(REPO)}
    prefect = str(Path(sys.executable).with_name("prefect"))
    result = subprocess.run(
        [prefect, "--no-prompt", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(
            f"prefect {' '.join(args)} exited with {result.returncode}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def prefect_api_call(api_url: str, method: str, path: str, body: Any = None) -> Any:
    """One call of the REST API the Prefect UI uses; the decoded JSON answer (None if empty).

    A busy SQLite server answers 503 while a write lock is held (seen with two test workers on two
    cores); like Prefect's own client, the call is retried then, a few times with backoff."""
    import time

    import httpx

    for attempt in range(6):
        response = httpx.request(method, f"{api_url}{path}", json=body, timeout=30)
        if response.status_code not in (502, 503) or attempt == 5:
            break
        time.sleep(2**attempt / 2)
    response.raise_for_status()
    return response.json() if response.content else None


def wait_for_flow_run(api_url: str, flow_run_id: str, timeout_s: float = 300) -> dict[str, Any]:
    """The flow run (as the API returns it) once its state is final."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        run = prefect_api_call(api_url, "GET", f"/flow_runs/{flow_run_id}")
        if run["state_type"] in _FINAL_STATE_TYPES:
            return run
        if time.monotonic() > deadline:
            pytest.fail(f"flow run {run['name']} still {run['state_name']} after {timeout_s:.0f}s")
        time.sleep(1)


@dataclass(frozen=True)
class ProcessPoolDeployments:
    api_url: str
    deployment_ids: dict[str, str]  # deployment name -> id
    worker_log: Path

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


@pytest.fixture(scope="session")
def process_pool_deployments(
    prefect_api: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessPoolDeployments]:
    """prefect.yaml deployed by `prefect deploy --all` onto the `process` work pool, with a
    `prefect worker` subprocess polling it (flow runs execute in this checkout)."""
    import signal

    prefect_cli("work-pool", "create", PROCESS_POOL, "--type", "process")
    prefect_cli("deploy", "--all")
    deployments = prefect_api_call(
        prefect_api,
        "POST",
        "/deployments/filter",
        {"work_pools": {"name": {"any_": [PROCESS_POOL]}}},
    )
    ids = {deployment["name"]: deployment["id"] for deployment in deployments}
    # The nightly cron must not start a whole pipeline should the session span 02:00 UTC.
    nightly = ids["pipeline-nightly"]
    prefect_api_call(prefect_api, "POST", f"/deployments/{nightly}/pause_deployment")
    log = tmp_path_factory.mktemp("process-worker") / "worker.log"
    # Polling every 2 s instead of 10 s starts each run soon after it is created.
    env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    prefect = str(Path(sys.executable).with_name("prefect"))
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [prefect, "worker", "start", "--pool", PROCESS_POOL, "--name", "pytest-worker"],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield ProcessPoolDeployments(prefect_api, ids, log)
    finally:
        # SIGINT is the worker's orderly stop; it keeps polling through a SIGTERM.
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@dataclass(frozen=True)
class DeploymentRun:
    flow_run: dict[str, Any]  # the finished flow run, as the API returns it
    parameters: dict[str, Any]
    store_root: Path


def ingest_parameters(corpus: Path, store_root: Path, shard_rows: int) -> dict[str, Any]:
    """Parameters of the `ingest` deployment for the mail corpus `corpus` into `store_root`."""
    config = {
        "source": str(corpus),
        "text_format": "email",
        "text_column": "raw",
        "passthrough_columns": ["group"],
        "shard_rows": shard_rows,
    }
    return {"config": config, "store_root": str(store_root)}


@pytest.fixture(scope="session")
def ingest_deployment_run(
    process_pool_deployments: ProcessPoolDeployments,
    corpus_slice: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> DeploymentRun:
    """A run of the `ingest` deployment with custom parameters (300 mails, 70 rows per shard, a
    fresh store), created through the REST API as the UI's Run button does, run by the worker."""
    api_url = process_pool_deployments.api_url
    parameters = ingest_parameters(corpus_slice, tmp_path_factory.mktemp("deployed-store"), 70)
    deployment_id = process_pool_deployments.deployment_ids["ingest"]
    created = prefect_api_call(
        api_url, "POST", f"/deployments/{deployment_id}/create_flow_run", {"parameters": parameters}
    )
    return DeploymentRun(
        wait_for_flow_run(api_url, created["id"]), parameters, Path(parameters["store_root"])
    )
