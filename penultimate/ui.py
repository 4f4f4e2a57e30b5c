"""How artifacts read in the Prefect UI: PNGs inline (data URIs), numbers rounded, and links a
browser opens (files over HTTP from `penultimate serve`, never `file://`). No Prefect imports.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

FILES_URL_ENV = "PENULTIMATE_FILES_URL"
SERVE_PORT = 8765
DEFAULT_FILES_URL = f"http://127.0.0.1:{SERVE_PORT}"
# Larger PNGs are linked, not inlined: the UI stores artifact markdown in its database.
INLINE_PNG_LIMIT = 1_500_000


def files_url() -> str:
    """Where `penultimate serve` (or any static server over the store root) serves the store."""
    return (os.environ.get(FILES_URL_ENV) or DEFAULT_FILES_URL).rstrip("/")


def file_url(store_root: Path, path: Path) -> str:
    """The HTTP URL of a file or folder inside the store, e.g. `.../clusters/<key>/map.html`."""
    relative = Path(path).resolve().relative_to(Path(store_root).resolve())
    return f"{files_url()}/{quote(relative.as_posix())}"


def inline_png(path: Path, alt: str, store_root: Path) -> str:
    """Markdown that shows the PNG inside the artifact (a link when it is too large)."""
    data = Path(path).read_bytes()
    if len(data) > INLINE_PNG_LIMIT:
        return f"[{alt} ({len(data) // 1024} KB)]({file_url(store_root, path)})"
    return f"![{alt}](data:image/png;base64,{base64.b64encode(data).decode('ascii')})"


def inline_pngs(folder: Path, names: Sequence[str], store_root: Path) -> list[str]:
    """`inline_png` of each of `names` that `folder` holds, alt text the file name."""
    return [inline_png(folder / n, n, store_root) for n in names if (folder / n).exists()]


def rounded(value: Any, digits: int = 4) -> Any:
    """Floats rounded to `digits` significant decimals, inside lists and dicts too."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, Mapping):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table, floats rounded and `|` in a cell escaped (it would end it)."""

    def cell(value: Any) -> str:
        return str(rounded(value)).replace("|", "\\|")

    return [
        "| " + " | ".join(cell(h) for h in header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows),
    ]


def serve_store(store_root: Path, host: str = "127.0.0.1", port: int = SERVE_PORT) -> None:
    """Serve the store's files read-only over HTTP until interrupted (the links in artifacts)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(store_root))
    with http.server.ThreadingHTTPServer((host, port), handler) as server:
        print(f"serving {store_root} at http://{host}:{server.server_address[1]}/ (Ctrl-C stops)")
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
