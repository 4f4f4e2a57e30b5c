"""Flow runs started from the `penultimate` command carry their process (host and pid) as a tag,
so the next command marks Crashed the runs whose process died without saying so (SIGKILL, OOM).
"""

from __future__ import annotations

import os
import socket

from penultimate.artifacts import local_process_gone

OWNER_TAG = "penultimate-cli"
_PID_TAG_PREFIX = "pid:"


def owner_tags() -> set[str]:
    """The tags of a run this process starts."""
    return {OWNER_TAG, f"{_PID_TAG_PREFIX}{socket.gethostname()}:{os.getpid()}"}


def _process_gone(tags: list[str]) -> bool:
    """Whether a run's owner ran on this host and has exited (another host's cannot be asked)."""
    for tag in tags:
        if tag.startswith(_PID_TAG_PREFIX):
            host, _, pid = tag.removeprefix(_PID_TAG_PREFIX).rpartition(":")
            return host == socket.gethostname() and local_process_gone(pid)
    return False


def mark_dead_runs_crashed() -> int:
    """Set Crashed on every Running or Pending run this host's `penultimate` started and whose
    process is gone; returns how many. Needs PREFECT_API_URL set (Prefect imported here)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    unfinished = FlowRunFilter(
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
        ),
        tags=FlowRunFilterTags(all_=[OWNER_TAG]),
    )
    marked = 0
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=unfinished, limit=200):
            if _process_gone(run.tags):
                message = "its penultimate process exited without reporting (killed?)"
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                marked += 1
    return marked
