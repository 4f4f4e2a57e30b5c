"""Running a flow inside another flow, in the same process: the parent's heartbeat already shows the
process is alive, so the subflow sends none (and its end skips the wait for a heartbeat thread).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

Result = TypeVar("Result")


def run_subflow(subflow: Callable[..., Result], **params: Any) -> Result:
    """`subflow(**params)` without a heartbeat of its own.

    Prefect's heartbeat thread sleeps in one-second steps and every flow run waits for it at its
    end: measured 0.8-1.0 s per stage subflow, most of a cached pipeline rerun. Zombie detection
    loses nothing: it watches the root flow run's heartbeats, which go on."""
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return subflow(**params)
