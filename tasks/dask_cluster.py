"""The Dask task runner the embed flow maps its shard tasks onto: an existing cluster by address,
or a local cluster of single-threaded worker processes.
"""

from __future__ import annotations

import dask.config
from prefect_dask import DaskTaskRunner

from penultimate.config import DaskRunnerConfig

# The workers' statistical profiler samples every thread's stack each 10 ms; on 2 cores that
# steals time from the import and the model load, and nobody reads a local cluster's profile.
_NO_PROFILER = {"distributed": {"worker": {"profile": {"enabled": False}}}}


def dask_task_runner(runner: DaskRunnerConfig) -> DaskTaskRunner:
    """An existing cluster by address, or a local cluster of single-threaded worker processes."""
    if runner.dask_address:
        return DaskTaskRunner(address=runner.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": runner.n_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": ":0",  # a free port: several clusters may run side by side
            # The nanny replaces whole top-level sections, so it gets them merged in full.
            "config": dask.config.merge(dask.config.config, _NO_PROFILER),
        }
    )
