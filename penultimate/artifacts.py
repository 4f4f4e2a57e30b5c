"""The artifact store: content-addressed stage outputs, each a folder published atomically.

A folder `ROOT/<stage>/<key>/` exists for readers only when its `manifest.json` is valid.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, ValidationError, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from penultimate import __version__

HOME_ENV = "PENULTIMATE_HOME"
DEFAULT_HOME = "artifacts"
MANIFEST = "manifest.json"
_STAGING_PREFIX = ".staging-"
_TRASH_PREFIX = ".trash-"
# A staging folder names its writer (host and pid): one whose writer on this host is gone is
# swept at once. A writer on another host cannot be asked, so its folder is swept when this old.
_ABANDONED_AFTER_S = 6 * 3600
_HOST = socket.gethostname().replace("-", "_")
# Why a store cannot take a write: full, over quota, read-only, refused.
STORE_FULL_OR_LOCKED = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
)


class ArtifactRef(BaseModel):
    """What a task returns: small, JSON-serialisable, enough to find and verify the artifact.

    It also validates from one string, the artifact's folder (`artifacts/dataset/<key>`), which is
    how a deployment form or a config file names an input: its JSON schema is that string.
    """

    model_config = ConfigDict(frozen=True)

    stage: str
    key: str
    uri: str

    @model_validator(mode="before")
    @classmethod
    def _from_folder(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            path = Path(value).expanduser().resolve()
            return {"stage": path.parent.name, "key": path.name, "uri": str(path)}
        return value

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "type": "string",
            "title": "Artifact folder",
            "description": "An artifact folder, e.g. artifacts/dataset/<key> (`penultimate ls`).",
        }

    @property
    def path(self) -> Path:
        return Path(self.uri)


class StoredRef(BaseModel):
    """An artifact named inside its store (stage and key, no path): what manifests record, so a
    store can be moved or mounted elsewhere."""

    model_config = ConfigDict(frozen=True)

    stage: str
    key: str

    @classmethod
    def of(cls, ref: ArtifactRef) -> StoredRef:
        return cls(stage=ref.stage, key=ref.key)


class FileEntry(BaseModel):
    path: str
    size: int
    sha256: str


class Manifest(BaseModel):
    stage: str
    key: str
    code_version: str
    config: dict[str, Any]
    inputs: list[StoredRef]
    files: list[FileEntry]
    metrics: dict[str, Any]
    created_at: str
    library_version: str


class Published(NamedTuple):
    """What `ArtifactStore.publish` returns: the artifact and the manifest it was published with."""

    ref: ArtifactRef
    manifest: Manifest


@dataclass(frozen=True)
class Stage:
    """A kind of artifact. Bump `code_version` when the code changes what the stage writes."""

    name: str
    code_version: str


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal values give equal text."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def artifact_key(
    stage: Stage, config: BaseModel | Mapping[str, Any], inputs: Iterable[ArtifactRef] = ()
) -> str:
    """Content key: equal stage code, config and upstream keys give equal keys; else not."""
    material = canonical_json(
        {
            "stage": stage.name,
            "code_version": stage.code_version,
            "config": config,
            "inputs": sorted(f"{ref.stage}/{ref.key}" for ref in inputs),
        }
    )
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_MEMO: dict[tuple[str, int, int, int], str] = {}


def sha256_file_memo(path: Path) -> str:
    """`sha256_file`, remembered for this process while the file's size, mtime and inode stay the
    same: weights that several keys are computed from are hashed once, not once per key."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _MEMO:
        _MEMO[key] = sha256_file(path)
    return _MEMO[key]


class ArtifactStore:
    """A root folder of artifacts. Every worker must see the same root (local disk or shared mount).

    Args:
        root: the store's root folder; default `$PENULTIMATE_HOME`, else `./artifacts`.

    Example:
        >>> store = ArtifactStore("/tmp/store")
        >>> write = lambda folder: {"chars": (folder / "x.txt").write_text("x")}
        >>> ref, manifest = store.publish(Stage("demo", "1"), {"n": 1}, write)
        >>> store.validate(ref) == manifest
        True
    """

    def __init__(self, root: str | Path | None = None) -> None:
        chosen = root if root is not None else os.environ.get(HOME_ENV, DEFAULT_HOME)
        self.root = Path(chosen).expanduser().resolve()

    def ref(self, stage: Stage | str, key: str) -> ArtifactRef:
        name = stage.name if isinstance(stage, Stage) else stage
        return ArtifactRef(stage=name, key=key, uri=str(self.root / name / key))

    def resolve(self, stored: StoredRef) -> ArtifactRef:
        """The ref of an artifact a manifest names (an input), in this store."""
        return self.ref(stored.stage, stored.key)

    def input_of(self, ref: ArtifactRef, stage: Stage) -> ArtifactRef | None:
        """The `stage` input that `ref`'s manifest records, if any, in this store."""
        manifest = self.read_manifest(ref)
        inputs = manifest.inputs if manifest else []
        return next((self.resolve(i) for i in inputs if i.stage == stage.name), None)

    def relative(self, path: Path) -> str:
        """`path` relative to the store root, as manifests record files of other artifacts (a file
        outside the store keeps its absolute path)."""
        resolved = Path(path).resolve()
        return (
            resolved.relative_to(self.root).as_posix()
            if resolved.is_relative_to(self.root)
            else str(resolved)
        )

    def ref_for(
        self,
        stage: Stage,
        config: BaseModel | Mapping[str, Any],
        inputs: Iterable[ArtifactRef] = (),
    ) -> ArtifactRef:
        return self.ref(stage, artifact_key(stage, config, inputs))

    def read_manifest(self, ref: ArtifactRef) -> Manifest | None:
        """The manifest if present and well-formed for this ref; files are not checked."""
        try:
            manifest = Manifest.model_validate_json((ref.path / MANIFEST).read_bytes())
        except (OSError, ValidationError):
            return None
        if manifest.stage != ref.stage or manifest.key != ref.key:
            return None
        return manifest

    def validate(self, ref: ArtifactRef, *, checksums: bool = True) -> Manifest | None:
        """The manifest if the artifact is complete and undamaged, else None."""
        manifest = self.read_manifest(ref)
        if manifest is None or self.damage(ref, manifest, checksums=checksums):
            return None
        return manifest

    def damage(self, ref: ArtifactRef, manifest: Manifest, *, checksums: bool = True) -> str | None:
        """The first file of `manifest` that is missing or differs from it, said in words."""
        for entry in manifest.files:
            file = ref.path / entry.path
            try:
                size = file.stat().st_size
            except OSError:
                return f"{entry.path} is missing"
            if size != entry.size:
                return f"{entry.path} has {size} bytes, the manifest says {entry.size}"
            if checksums and sha256_file(file) != entry.sha256:
                return f"{entry.path} differs from its checksum"
        return None

    def publish(
        self,
        stage: Stage,
        config: BaseModel | Mapping[str, Any],
        write: Callable[[Path], Mapping[str, Any] | None],
        inputs: Iterable[ArtifactRef] = (),
        ref: ArtifactRef | None = None,
    ) -> Published:
        """Run `write(folder)` in a staging folder, then move the folder into place atomically.

        `write` fills the folder and returns the metrics for the manifest. A crash or kill at any
        point leaves either the previous artifact or the new one, never a partial one. `ref`, when
        the caller has computed it already, saves computing the key again.
        """
        inputs = list(inputs)
        ref = ref or self.ref_for(stage, config, inputs)
        stage_dir = self.root / stage.name
        stage_dir.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned(stage_dir)
        staging = stage_dir / f"{_STAGING_PREFIX}{ref.key}-{_writer_tag()}"
        staging.mkdir()
        try:
            try:
                metrics = dict(write(staging) or {})
            except Exception as error:
                store_error = store_write_error(error, self.root)
                if store_error is None or store_error is error:
                    raise
                raise store_error from error
            manifest = Manifest(
                stage=stage.name,
                key=ref.key,
                code_version=stage.code_version,
                config=json.loads(canonical_json(config)),
                inputs=[StoredRef.of(i) for i in inputs],
                files=_file_entries(staging),
                metrics=json.loads(canonical_json(metrics)),
                created_at=datetime.now(UTC).isoformat(),
                library_version=__version__,
            )
            write_text_atomic(staging / MANIFEST, manifest.model_dump_json(indent=2))
            self._move_into_place(staging, ref.path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return Published(ref, manifest)

    @staticmethod
    def _move_into_place(staging: Path, final: Path) -> None:
        # An old folder is invalid (else we would not republish): move it aside, not delete it in
        # place, so the swap itself is two renames.
        trash = final.with_name(f"{_TRASH_PREFIX}{final.name}-{_writer_tag()}")
        with contextlib.suppress(FileNotFoundError):  # none there, or a concurrent writer's move
            final.rename(trash)
        try:
            staging.rename(final)
        except OSError:
            # A concurrent writer (another run of the same config) published this key a moment
            # ago; its folder got there complete, by rename, so it stands.
            if not (final / MANIFEST).is_file():
                raise
        finally:
            shutil.rmtree(trash, ignore_errors=True)

    @staticmethod
    def _remove_abandoned(stage_dir: Path) -> None:
        cutoff = time.time() - _ABANDONED_AFTER_S
        for child in stage_dir.iterdir():
            if not child.name.startswith((_STAGING_PREFIX, _TRASH_PREFIX)):
                continue
            try:
                abandoned = _writer_gone(child.name) or child.stat().st_mtime < cutoff
            except FileNotFoundError:
                continue  # another writer moved its staging folder into place meanwhile
            if abandoned:
                shutil.rmtree(child, ignore_errors=True)

    def delete(self, ref: ArtifactRef) -> None:
        """Remove an artifact folder: renamed out of sight first, then deleted, so a crash leaves
        the artifact whole or gone, never a half-deleted folder at its path (a leftover trash
        folder is swept like an abandoned staging one)."""
        trash = ref.path.with_name(f"{_TRASH_PREFIX}{ref.key}-{uuid.uuid4().hex[:8]}")
        ref.path.rename(trash)
        shutil.rmtree(trash)

    def artifacts(self, stage: Stage | str) -> list[ArtifactRef]:
        """Valid artifacts of a stage (manifest well-formed; files not re-hashed)."""
        name = stage.name if isinstance(stage, Stage) else stage
        stage_dir = self.root / name
        if not stage_dir.is_dir():
            return []
        refs = (self.ref(name, child.name) for child in sorted(stage_dir.iterdir()))
        return [r for r in refs if not r.key.startswith(".") and self.read_manifest(r)]

    def latest(self, stage: Stage | str) -> ArtifactRef | None:
        """The newest valid artifact of a stage (by its manifest's creation time), if any."""
        manifests = {ref: self.read_manifest(ref) for ref in self.artifacts(stage)}
        return max(manifests, key=lambda r: manifests[r].created_at, default=None)  # type: ignore[union-attr]

    def check_writable(self) -> None:
        """Before any work: the store is a folder this process can create files in."""
        from penultimate.errors import InputError

        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"store {self.root}: is a file, not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-check-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise InputError(f"store {self.root}: not writable ({error.strerror})") from None

    def input_artifact(self, ref: ArtifactRef | None, stage: Stage, made_by: str) -> ArtifactRef:
        """`ref`, checked to be a complete `stage` artifact; when None, the store's newest one
        (`made_by` names the command that makes one, for the error when there is none)."""
        from penultimate.errors import InputError

        if ref is not None:
            return open_artifact(ref.uri, stage.name)
        newest = self.latest(stage)
        if newest is None:
            raise InputError(f"no {stage.name} artifact in {self.root}: run {made_by} first")
        return newest


def store_write_error(error: BaseException, where: Path) -> OSError | None:
    """The store-full-or-locked `OSError` behind a failed write into the store at `where`, or
    None if it is something else.

    Libraries with native writers report a full or read-only disk as text only: polars (Rust) as
    "... (os error 28)", sometimes in an `OSError` without errno, TensorFlow (C++) with the
    system's message ("No space left on device"), pyarrow with an errno but no file name. Such
    an error becomes the `OSError` it stands for, named after `where`, but only when the store's
    file system shows that state (nearly no space left, or mounted read-only): the same words may
    be about another disk, such as a temporary folder.
    """
    # Only the codes that can be about nothing but a write: a "Permission denied" may be about an
    # input the writer read.
    write_codes = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    if isinstance(error, OSError) and error.errno is not None:
        if error.errno not in STORE_FULL_OR_LOCKED:
            return None
        # pyarrow names no file ("Error writing bytes to file. Detail: [errno 28] ...").
        if error.filename is None and error.errno in write_codes and _shows(where, error.errno):
            return OSError(error.errno, os.strerror(error.errno), str(where))
        return error
    text = str(error)
    for code in write_codes:
        if f"(os error {code})" in text or os.strerror(code) in text:
            return OSError(code, os.strerror(code), str(where)) if _shows(where, code) else None
    return None


# Below this many free bytes, a "no space" message from a writer is taken to be about the store.
_NEARLY_FULL_BYTES = 16 * 2**20


def _shows(where: Path, code: int) -> bool:
    """Whether the file system holding `where` is in the state `code` names (a quota cannot be
    read from here, so EDQUOT is believed)."""
    try:
        stats = os.statvfs(where)
    except OSError:
        return False
    if code == errno.ENOSPC:
        return stats.f_bavail * stats.f_frsize < _NEARLY_FULL_BYTES
    if code == errno.EROFS:
        return bool(stats.f_flag & os.ST_RDONLY)
    return True


def _writer_tag() -> str:
    """`<host>-<pid>-<random>`: who writes a staging or trash folder, and a unique suffix."""
    return f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _writer_gone(folder_name: str) -> bool:
    """Whether the writer a folder's `_writer_tag` names ran on this host and has exited."""
    parts = folder_name.rsplit("-", 3)
    return len(parts) == 4 and parts[1] == _HOST and local_process_gone(parts[2])


def local_process_gone(pid: str) -> bool:
    """Whether no process `pid` (digits) runs on this host; unknown (False) when not digits."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _file_entries(folder: Path) -> list[FileEntry]:
    return [
        FileEntry(
            path=file.relative_to(folder).as_posix(),
            size=file.stat().st_size,
            sha256=sha256_file(file),
        )
        for file in sorted(folder.rglob("*"))
        if file.is_file()
    ]


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file under a temporary name, fsync, and rename it into place."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def open_artifact(uri: str | Path, stage: str, *, intact: bool = False) -> ArtifactRef:
    """The ref of an existing artifact folder given by path, checked to be a valid `stage` one
    (and, if `intact`, every file present with its checksum: for a model about to be loaded)."""
    from penultimate.errors import InputError

    path = Path(uri).expanduser().resolve()
    ref = ArtifactRef(stage=path.parent.name, key=path.name, uri=str(path))
    if ref.stage != stage:
        raise InputError(f"{uri}: a {ref.stage!r} artifact folder, expected a {stage!r} one")
    store = ArtifactStore(path.parent.parent)
    manifest = store.read_manifest(ref)
    if manifest is None:
        raise InputError(f"{uri}: not a complete artifact (manifest.json missing or invalid)")
    problem = store.damage(ref, manifest) if intact else None
    if problem:
        raise InputError(f"{uri}: damaged artifact: {problem}; make it again")
    return ref
