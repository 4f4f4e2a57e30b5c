"""Garbage collection of the artifact store (`penultimate gc`): what stays (the newest artifacts of
each end stage, those deployments name, and everything they use), and safe removal of the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import yaml

from penultimate.artifacts import ArtifactStore
from penultimate.errors import InputError
from penultimate.inspection import StoredArtifact, artifact_lines, human_size, store_artifacts

DEPLOYMENTS_FILE = "prefect.yaml"


def named_keys(value: Any) -> set[str]:
    """Every string in a JSON-like value and each `/`-separated part of it. Manifests name other
    artifacts by key (an embeddings artifact's shards, the features an embedding shard or a
    classifier was made from) or by a path through the store (a shard's source file), and
    deployment parameters by key or folder path; intersected with the store's keys, these are
    the artifacts they name."""
    if isinstance(value, str):
        return {value, *value.split("/")}
    items = value.values() if isinstance(value, Mapping) else value
    if isinstance(value, Mapping | list | tuple):
        return set().union(*(named_keys(item) for item in items))
    return set()


def uses(artifact: StoredArtifact, by_key: Mapping[str, StoredArtifact]) -> list[StoredArtifact]:
    """The artifacts of the store one artifact needs: its inputs and every other artifact its
    config or metrics name."""
    manifest = artifact.manifest
    named = {i.key for i in manifest.inputs} | named_keys(manifest.config)
    named |= named_keys(manifest.metrics)
    return [by_key[key] for key in sorted(named - {manifest.key}) if key in by_key]


def deployment_keys(files: Iterable[Path]) -> set[str]:
    """Every key or artifact path named in the parameters of the deployments in `files`
    (prefect.yaml's layout)."""
    named: set[str] = set()
    for file in files:
        try:
            document = yaml.safe_load(file.read_text())
        except OSError as error:
            raise InputError(f"{file}: cannot read it ({error.strerror})") from None
        except yaml.YAMLError as error:
            raise InputError(f"{file}: not valid YAML: {' '.join(str(error).split())}") from None
        deployments = document.get("deployments") if isinstance(document, dict) else None
        if not isinstance(deployments, list):
            raise InputError(f"{file}: no `deployments` list (a prefect.yaml is expected)")
        for deployment in deployments:
            if isinstance(deployment, dict):
                named |= named_keys(deployment.get("parameters") or {})
    return named


@dataclass(frozen=True)
class GcPlan:
    """What gc keeps and deletes; `delete` lists artifacts that use others before those they use,
    so an interrupted gc never leaves an artifact whose inputs are gone."""

    keep: list[StoredArtifact]
    delete: list[StoredArtifact]
    end_stages: list[str]
    pinned: list[StoredArtifact]


def plan_gc(artifacts: Sequence[StoredArtifact], keep_last: int, pinned_keys: set[str]) -> GcPlan:
    """Keep the `keep_last` newest artifacts of each end stage (a stage no artifact of the store
    uses), the artifacts in `pinned_keys`, and everything those use, transitively; delete the
    rest. `artifacts` come newest first within a stage (as `store_artifacts` lists them)."""
    by_key = {a.ref.key: a for a in artifacts}
    used_by = {a.ref.key: uses(a, by_key) for a in artifacts}
    used_stages = {u.ref.stage for used in used_by.values() for u in used}
    stages = list(dict.fromkeys(a.ref.stage for a in artifacts))
    end_stages = [stage for stage in stages if stage not in used_stages]
    pinned = [a for a in artifacts if a.ref.key in pinned_keys]
    roots = []
    for stage in end_stages:
        roots += [a for a in artifacts if a.ref.stage == stage][:keep_last]
    kept: set[str] = set()
    pending = [a.ref.key for a in [*roots, *pinned]]
    while pending:
        key = pending.pop()
        if key not in kept:
            kept.add(key)
            pending += [u.ref.key for u in used_by[key]]
    unreachable = {a.ref.key for a in artifacts} - kept
    # graphlib orders each node after its predecessors; here a node's predecessors are the
    # unreachable artifacts that use it, so users come first.
    users: dict[str, set[str]] = {key: set() for key in unreachable}
    for key in unreachable:
        for used in used_by[key]:
            if used.ref.key in unreachable:
                users[used.ref.key].add(key)
    order = TopologicalSorter(users).static_order()
    return GcPlan(
        keep=[a for a in artifacts if a.ref.key in kept],
        delete=[by_key[key] for key in order],
        end_stages=end_stages,
        pinned=pinned,
    )


def collect_garbage(
    store: ArtifactStore,
    keep_last: int,
    deployments: Sequence[Path] | None = None,
    apply: bool = False,
) -> str:
    """`penultimate gc`: plan, delete when `apply` (else a dry run), and say what and why.

    `deployments` are prefect.yaml-style files whose deployment parameters pin artifacts; None
    reads ./prefect.yaml when there is one."""
    if keep_last < 0:
        raise InputError(f"--keep-last: {keep_last}; it must be 0 or more")
    if deployments is None:
        default = Path(DEPLOYMENTS_FILE)
        deployments = [default] if default.is_file() else []
    plan = plan_gc(store_artifacts(store), keep_last, deployment_keys(deployments))
    if apply:
        for artifact in plan.delete:
            store.delete(artifact.ref)
    freed = human_size(sum(a.size for a in plan.delete))
    total = len(plan.keep) + len(plan.delete)
    if not plan.delete:
        summary = f"nothing to delete in {store.root}"
    elif apply:
        summary = f"deleted {len(plan.delete)} of {total} artifact(s), freed {freed}"
    else:
        summary = (
            f"dry run: would delete {len(plan.delete)} of {total} artifact(s), {freed} "
            f"(--apply deletes them)"
        )
    why = f"the {keep_last} newest of each end stage ({', '.join(plan.end_stages) or 'none'})"
    if deployments:
        names = ", ".join(str(f) for f in deployments)
        why += f", {len(plan.pinned)} named in deployment parameters ({names})"
    kept = human_size(sum(a.size for a in plan.keep))
    reason = f"kept {len(plan.keep)} artifact(s), {kept}: {why}, and every artifact they use"
    return "\n".join([summary, *(f"  {line}" for line in artifact_lines(plan.delete)), reason])
