"""Artifact-backed Prefect tasks: the task's cache key is its artifact's content key, and a cache
hit is trusted only while the artifact in the store is still complete and undamaged.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture
from pydantic import BaseModel

from penultimate.artifacts import ArtifactRef, ArtifactStore, Stage

Identity = Callable[[Mapping[str, Any]], tuple[BaseModel | Mapping[str, Any], list[ArtifactRef]]]


def config_and_inputs(params: Mapping[str, Any]) -> tuple[Any, list[ArtifactRef]]:
    """Default identity: the `config` parameter plus every ArtifactRef parameter."""
    inputs: list[ArtifactRef] = []
    for value in params.values():
        if isinstance(value, ArtifactRef):
            inputs.append(value)
        elif isinstance(value, list | tuple):
            inputs.extend(v for v in value if isinstance(v, ArtifactRef))
    return params["config"], inputs


class ArtifactTask:
    """A Prefect task whose result is the artifact `stage` publishes for the given parameters.

    The wrapped function must take `store_root: str` and publish exactly the artifact that
    `identity(params)` names. Call it like the function, with keyword arguments, or `submit`.
    """

    def __init__(
        self, fn: Callable[..., ArtifactRef], stage: Stage, identity: Identity, options: dict
    ) -> None:
        self.stage = stage
        self.identity = identity
        self._signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> ArtifactRef:
            params = self._signature.bind(*args, **kwargs).arguments
            expected = self.expected_ref(params)
            if ArtifactStore(params["store_root"]).validate(expected) is not None:
                get_run_logger().info(
                    "%s artifact %s is complete; reusing it", stage.name, expected.key
                )
                return expected
            ref = fn(*args, **kwargs)
            if ref != expected:
                raise RuntimeError(f"{fn.__name__} published {ref.uri}, expected {expected.uri}")
            return ref

        self.task: Task = task(run, cache_key_fn=self._cache_key, persist_result=True, **options)

    def expected_ref(self, params: Mapping[str, Any]) -> ArtifactRef:
        config, inputs = self.identity(params)
        return ArtifactStore(params["store_root"]).ref_for(self.stage, config, inputs)

    def complete_artifact(self, **params: Any) -> ArtifactRef | None:
        """The artifact these parameters name, if it is already complete and undamaged."""
        ref = self.expected_ref(params)
        return ref if ArtifactStore(params["store_root"]).validate(ref) is not None else None

    def _cache_key(self, _: TaskRunContext, params: dict[str, Any]) -> str:
        # The same content key in two stores is two artifacts; Prefect's records must not mix them.
        root = hashlib.sha256(str(ArtifactStore(params["store_root"]).root).encode()).hexdigest()
        return f"{self.stage.name}-{self.expected_ref(params).key}-{root[:12]}"

    def _checked(self, params: Mapping[str, Any]) -> Task:
        store = ArtifactStore(params["store_root"])
        stale = store.validate(self.expected_ref(params)) is None
        return self.task.with_options(refresh_cache=stale)

    def __call__(self, **params: Any) -> ArtifactRef:
        return self._checked(params)(**params)

    def submit(self, **params: Any) -> PrefectFuture:
        """Run on the flow's task runner (e.g. a Dask worker); parameters must be plain values."""
        return self._checked(params).submit(**params)


def artifact_task(
    stage: Stage, *, identity: Identity = config_and_inputs, **options: Any
) -> Callable[[Callable[..., ArtifactRef]], ArtifactTask]:
    """Decorator: make `fn` an ArtifactTask for `stage` (extra options go to `prefect.task`)."""
    return lambda fn: ArtifactTask(fn, stage, identity, options)
