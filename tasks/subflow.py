"""Running a flow inside another flow, in the same process: the parent's heartbeat already shows the
process is alive, so the subflow sends none (and its end skips the wait for a heartbeat thread);
and finding a flow run's subflow runs, every level down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

Result = TypeVar("Result")


def run_subflow(subflow: Callable[..., Result], **params: Any) -> Result:
    """`subflow(**params)` without a heartbeat of its own.

    Prefect's heartbeat thread sleeps in one-second steps and every flow run waits for it at its
    end: measured 0.8-1.0 s per stage subflow, most of a cached pipeline rerun. Zombie detection
    loses nothing: it watches the root flow run's heartbeats, which go on."""
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return subflow(**params)


def subflow_runs(client: SyncPrefectClient, flow_run_id: UUID) -> list[list[FlowRun]]:
    """The flow runs below `flow_run_id`, level by level: its subflows' runs first (oldest
    first), then theirs, down to the deepest."""
    levels: list[list[FlowRun]] = []
    frontier = [flow_run_id]
    while frontier:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)
            ),
            sort=FlowRunSort.START_TIME_ASC,
            limit=200,
        )
        if children:
            levels.append(children)
        frontier = [child.id for child in children]
    return levels
