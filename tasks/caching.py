"""Artifact-backed Prefect tasks: the task's cache key is its artifact's content key, and a cache
hit is trusted only while the artifact in the store is still complete and undamaged.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture
from pydantic import BaseModel, ConfigDict

from penultimate.artifacts import ArtifactRef, ArtifactStore, Manifest, Stage, canonical_json

Identity = Callable[[Mapping[str, Any]], tuple[BaseModel | Mapping[str, Any], list[ArtifactRef]]]
Body = Callable[..., Mapping[str, Any] | None]
Report = Callable[[ArtifactRef, Manifest, Mapping[str, Any]], None]


def config_and_inputs(params: Mapping[str, Any]) -> tuple[Any, list[ArtifactRef]]:
    """Default identity: the `config` parameter plus every ArtifactRef parameter."""
    inputs: list[ArtifactRef] = []
    for value in params.values():
        if isinstance(value, ArtifactRef):
            inputs.append(value)
        elif isinstance(value, list | tuple):
            inputs.extend(v for v in value if isinstance(v, ArtifactRef))
    return params["config"], inputs


class ArtifactTarget(BaseModel):
    """The artifact a task call is for, worked out once by the caller: its ref, the key's config
    and inputs (for the manifest), and whether it was complete when the call was made."""

    model_config = ConfigDict(frozen=True)

    ref: ArtifactRef
    key_config: dict[str, Any]
    inputs: list[ArtifactRef]
    complete: bool


class ArtifactTask:
    """A Prefect task whose result is the artifact `stage` publishes for the given parameters.

    The body is `fn(out: Path, **params) -> metrics`: it fills the staging folder `out` and
    returns the metrics for the manifest; it never computes keys, publishes or re-reads. Every
    parameter set must include `store_root`. `identity(params)` names the artifact (key config
    and input artifacts); it is computed once per call, here, and the artifact is validated once.
    `report(ref, manifest, params)` shows the artifact in the Prefect UI after every call, computed
    or cached, in the caller's run (so a nightly run with nothing new still shows its results).
    Call an ArtifactTask like the function, minus `out`, or `submit` (no report then).
    """

    def __init__(
        self,
        fn: Body,
        stage: Stage,
        identity: Identity,
        report: Report | None,
        options: dict[str, Any],
    ) -> None:
        self.stage = stage
        self.identity = identity
        self.report = report
        self.__doc__ = fn.__doc__

        def run(target: ArtifactTarget, **params: Any) -> ArtifactRef:
            if target.complete:
                # Complete at call time but without a Prefect cache record (a new API database).
                get_run_logger().info(
                    "%s artifact %s is complete; reusing it", stage.name, target.ref.key
                )
                return target.ref
            published = ArtifactStore(params["store_root"]).publish(
                stage,
                target.key_config,
                lambda out: fn(out=out, **params),
                target.inputs,
                ref=target.ref,
            )
            return published.ref

        # Prefect shows and validates the body's parameters (minus `out`) plus the target.
        body = inspect.signature(fn)
        shown = [p for name, p in body.parameters.items() if name != "out"]
        target_param = inspect.Parameter(
            "target", inspect.Parameter.KEYWORD_ONLY, annotation=ArtifactTarget
        )
        run.__signature__ = body.replace(  # type: ignore[attr-defined]
            parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in shown]
            + [target_param]
        )
        run.__name__ = fn.__name__
        run.__qualname__ = fn.__qualname__
        run.__module__ = fn.__module__
        run.__doc__ = fn.__doc__
        self.task: Task = task(run, cache_key_fn=self._cache_key, persist_result=True, **options)

    def target(self, params: Mapping[str, Any]) -> ArtifactTarget:
        """The artifact `params` name, and whether it is complete and undamaged (validated once)."""
        key_config, inputs = self.identity(params)
        store = ArtifactStore(params["store_root"])
        ref = store.ref_for(self.stage, key_config, inputs)
        return ArtifactTarget(
            ref=ref,
            key_config=json.loads(canonical_json(key_config)),
            inputs=list(inputs),
            complete=store.validate(ref) is not None,
        )

    def complete_artifact(self, **params: Any) -> ArtifactRef | None:
        """The artifact these parameters name, if it is already complete and undamaged."""
        target = self.target(params)
        return target.ref if target.complete else None

    @staticmethod
    def _cache_key(_: TaskRunContext, params: dict[str, Any]) -> str:
        # The same content key in two stores is two artifacts; Prefect's records must not mix them.
        ref: ArtifactRef = params["target"].ref
        root = hashlib.sha256(str(Path(ref.uri).parent.parent).encode()).hexdigest()
        return f"{ref.stage}-{ref.key}-{root[:12]}"

    def _with_target(
        self, target: ArtifactTarget | None, params: dict[str, Any]
    ) -> tuple[Task, dict[str, Any]]:
        target = target or self.target(params)
        return self.task.with_options(refresh_cache=not target.complete), {
            **params,
            "target": target,
        }

    def __call__(self, *, target: ArtifactTarget | None = None, **params: Any) -> ArtifactRef:
        """Run the task; `target`, when the caller has worked it out already (`self.target`),
        is not worked out again."""
        runnable, params = self._with_target(target, params)
        ref: ArtifactRef = runnable(**params)
        if self.report is not None:
            manifest = ArtifactStore(params["store_root"]).read_manifest(ref)
            if manifest is not None:
                self.report(ref, manifest, params)
        return ref

    def submit(self, *, target: ArtifactTarget | None = None, **params: Any) -> PrefectFuture:
        """Run on the flow's task runner (e.g. a Dask worker); parameters must be plain values."""
        runnable, params = self._with_target(target, params)
        return runnable.submit(**params)


def artifact_task(
    stage: Stage,
    *,
    identity: Identity = config_and_inputs,
    report: Report | None = None,
    **options: Any,
) -> Callable[[Body], ArtifactTask]:
    """Decorator: make `fn` an ArtifactTask for `stage` (extra options go to `prefect.task`)."""
    return lambda fn: ArtifactTask(fn, stage, identity, report, options)
