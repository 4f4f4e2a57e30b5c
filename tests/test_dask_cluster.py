"""The local Dask cluster the embed flow starts: real worker processes that run without Dask's
statistical profiler and keep the rest of Dask's configuration."""

from __future__ import annotations

import dask.config
from distributed import Client, LocalCluster

from penultimate.config import DaskRunnerConfig
from tasks.dask_cluster import dask_task_runner


def _worker_settings() -> tuple[object, object]:
    return (
        dask.config.get("distributed.worker.profile.enabled"),
        dask.config.get("distributed.admin.event-loop"),
    )


def test_local_workers_run_without_the_profiler_and_keep_the_rest_of_the_config() -> None:
    runner = dask_task_runner(DaskRunnerConfig(n_workers=2))
    with LocalCluster(**runner.cluster_kwargs) as cluster, Client(cluster) as client:
        settings = list(client.run(_worker_settings).values())
    assert settings == [(False, dask.config.get("distributed.admin.event-loop"))] * 2
