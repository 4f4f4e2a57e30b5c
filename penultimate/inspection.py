"""What the store holds, for people: every artifact with its headline numbers and size (`penultimate
ls`), and one artifact's manifest made readable (`penultimate show`). Reads manifests only.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import Any

from penultimate.artifacts import MANIFEST, ArtifactRef, ArtifactStore, Manifest, open_artifact
from penultimate.errors import InputError
from penultimate.pipeline_summary import headline
from penultimate.stages import ALL_STAGES

_PIPELINE_ORDER = {stage.name: rank for rank, stage in enumerate(ALL_STAGES)}
_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
# Longer lists (an embeddings artifact's shards, a SavedModel's files) show this many items and
# a count of the rest: `show` is for reading, the manifest itself has everything.
LIST_ITEMS = 10
FILE_ITEMS = 30


@dataclass(frozen=True)
class StoredArtifact:
    """An artifact of the store with its manifest and its folder's size on disk in bytes."""

    ref: ArtifactRef
    manifest: Manifest
    size: int

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.manifest.created_at).astimezone(UTC)


def folder_size(folder: Path) -> int:
    """Bytes of every file under `folder` (files that vanish meanwhile count as 0)."""
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += (Path(parent) / name).stat().st_size
    return total


def human_size(size: int) -> str:
    value, unit = float(size), 0
    while value >= 1024 and unit < len(_SIZE_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{size} B" if unit == 0 else f"{value:.1f} {_SIZE_UNITS[unit]}"


def stage_folders(store: ArtifactStore) -> list[str]:
    """The stage folders of a store: the pipeline's stages in pipeline order, then any others."""
    if not store.root.is_dir():
        raise InputError(f"{store.root}: no artifact store there (no such folder)")
    names = [c.name for c in store.root.iterdir() if c.is_dir() and not c.name.startswith(".")]
    return sorted(names, key=lambda name: (_PIPELINE_ORDER.get(name, len(_PIPELINE_ORDER)), name))


def store_artifacts(store: ArtifactStore, stage: str | None = None) -> list[StoredArtifact]:
    """Every artifact of the store (or of one stage) with a valid manifest, stages in pipeline
    order, newest first within a stage; files are not re-hashed."""
    names = stage_folders(store)
    if stage is not None:
        if stage not in names and stage not in _PIPELINE_ORDER:
            raise InputError(f"{stage}: no such stage in {store.root}; it has {names}")
        names = [stage] if stage in names else []
    found = []
    for name in names:
        artifacts = []
        for child in (store.root / name).iterdir():
            if child.name.startswith("."):  # staging and trash folders, never artifacts
                continue
            ref = store.ref(name, child.name)
            manifest = store.read_manifest(ref)
            if manifest is not None:
                artifacts.append(StoredArtifact(ref, manifest, folder_size(child)))
        found += sorted(artifacts, key=lambda a: a.created, reverse=True)
    return found


def artifact_lines(artifacts: list[StoredArtifact]) -> list[str]:
    """One aligned line per artifact: stage, key, created (UTC), size, headline numbers."""
    width = max((len(a.ref.stage) for a in artifacts), default=5)
    return [
        f"{a.ref.stage:<{width}}  {a.ref.key}  {a.created:%Y-%m-%d %H:%M:%S}  "
        f"{human_size(a.size):>10}  {headline(a.ref.stage, a.manifest.metrics)}".rstrip()
        for a in artifacts
    ]


def listing(store: ArtifactStore, stage: str | None = None) -> str:
    """`penultimate ls`: a header, a line per artifact, and the total."""
    artifacts = store_artifacts(store, stage)
    if not artifacts:
        return f"no {stage + ' ' if stage else ''}artifacts in {store.root}"
    width = max(len(a.ref.stage) for a in artifacts)
    header = f"{'STAGE':<{width}}  {'KEY':<24}  {'CREATED (UTC)':<19}  {'SIZE':>10}  HEADLINE"
    total = human_size(sum(a.size for a in artifacts))
    footer = f"{len(artifacts)} artifact(s), {total}, in {store.root}"
    return "\n".join([header, *artifact_lines(artifacts), footer])


def readable_number(value: float) -> str:
    """A metric as people read it: 4 significant digits (a float keeps its point: 1.0, not 1),
    scientific only for tiny values."""
    if value == 0 or not math.isfinite(value):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:.1f}"
    if abs(value) < 1e-3:
        return f"{value:.2e}"
    text = f"{value:.4g}"
    return text if "." in text else f"{text}.0"


def inline(value: Any) -> str:
    """A value on one line: numbers rounded, lists and mappings in brackets (long lists cut)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "none"}[value]
    if isinstance(value, float):
        return readable_number(value)
    if isinstance(value, Mapping):
        return "{" + _pairs(value) + "}"
    if isinstance(value, list | tuple):
        items = [inline(v) for v in value[:LIST_ITEMS]]
        if len(value) > LIST_ITEMS:
            items.append(f"... {len(value) - LIST_ITEMS} more")
        return "[" + ", ".join(items) + "]"
    return str(value)


def _pairs(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}: {inline(value)}" for key, value in values.items())


def tree_lines(values: Mapping[str, Any], depth: int = 1) -> list[str]:
    """Nested mappings as indented `key: value` lines; a list of mappings as one `- ` line per
    item (the first `LIST_ITEMS`); anything else inline."""
    pad = "  " * depth
    lines = []
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            lines += [f"{pad}{key}:", *tree_lines(value, depth + 1)]
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            lines.append(f"{pad}{key}: ({len(value)})")
            lines += [f"{pad}  - {_pairs(v)}" for v in value[:LIST_ITEMS]]
            if len(value) > LIST_ITEMS:
                lines.append(f"{pad}  ... {len(value) - LIST_ITEMS} more")
        else:
            lines.append(f"{pad}{key}: {inline(value)}")
    return lines


def _input_lines(store: ArtifactStore, manifest: Manifest) -> list[str]:
    lines = []
    for stage, group in groupby(manifest.inputs, key=lambda i: i.stage):
        inputs = list(group)
        for stored in inputs[:LIST_ITEMS]:
            present = (store.resolve(stored).path / MANIFEST).is_file()
            lines.append(f"  {stored.stage}/{stored.key}{'' if present else '  (missing)'}")
        if len(inputs) > LIST_ITEMS:
            lines.append(f"  ... {len(inputs) - LIST_ITEMS} more {stage}")
    return lines or ["  (none)"]


def describe(uri: str | Path) -> str:
    """`penultimate show`: an artifact's manifest (stage, key, created, code version), headline,
    inputs (stage/key), config, metrics (rounded, nested as indented lines) and files."""
    path = Path(uri).expanduser().resolve()
    if not path.is_dir():
        raise InputError(f"{uri}: no such artifact folder")
    ref = open_artifact(uri, path.parent.name)
    store = ArtifactStore(path.parent.parent)
    manifest = store.read_manifest(ref)
    assert manifest is not None  # open_artifact checked it
    artifact = StoredArtifact(ref, manifest, folder_size(path))
    files = manifest.files
    width = max((len(f.path) for f in files[:FILE_ITEMS]), default=0)
    file_lines = [f"  {f.path:<{width}}  {human_size(f.size):>10}" for f in files[:FILE_ITEMS]]
    if not files:
        file_lines = ["  (none: the manifest is the whole artifact)"]
    elif len(files) > FILE_ITEMS:
        file_lines.append(f"  ... {len(files) - FILE_ITEMS} more")
    return "\n".join(
        [
            f"artifact: {ref.uri}",
            f"stage:    {ref.stage}",
            f"key:      {ref.key}",
            f"created:  {artifact.created:%Y-%m-%d %H:%M:%S} UTC",
            f"code:     {ref.stage} v{manifest.code_version}, penultimate "
            f"{manifest.library_version}",
            f"size:     {human_size(artifact.size)} on disk",
            f"headline: {headline(ref.stage, manifest.metrics) or '-'}",
            f"inputs ({len(manifest.inputs)}):",
            *_input_lines(store, manifest),
            "config:",
            *(tree_lines(manifest.config) or ["  (none)"]),
            "metrics:",
            *(tree_lines(manifest.metrics) or ["  (none)"]),
            f"files ({len(files)}, {human_size(sum(f.size for f in files))}):",
            *file_lines,
        ]
    )
