"""Texts/s of the built-in encoder, freshly converted by this checkout's code, in each precision and
runtime (OpenVINO when installed) on the first N mails and on the same mails cut to 16 words; for
A/B runs between two commits (the section that uses it says which). Prints one JSON line.

Run with `make bench-bf16-rate` (~2 minutes on 2 cores; writes nothing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

import penultimate  # noqa: F401  (selects tf-keras before TensorFlow loads)
from penultimate.config import EmbeddingChoice
from penultimate.email_text import email_to_text
from penultimate.embed import EncoderEmbedder
from penultimate.encoders.bert_convert import build_encoder_pair
from penultimate.encoders.pair import EncoderPair
from penultimate.encoders.sources import resolve_weights_folder
from penultimate.features import LoadedEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", default="../shared/data/spamassassin.parquet")
    parser.add_argument("--mails", type=int, default=640, help="every third mail, this many")
    parser.add_argument("--rounds", type=int, default=3, help="the fastest round counts")
    args = parser.parse_args()
    raw = pl.read_parquet(args.corpus)["raw"].to_list()[::3][: args.mails]
    mails = [email_to_text(message).text for message in raw]
    corpora = {"mail": mails, "short": [" ".join(text.split()[:16]) for text in mails]}
    runtimes = ["tensorflow"] + ["openvino"] * bool(importlib.util.find_spec("openvino"))
    out = Path(tempfile.mkdtemp(prefix="bench-bf16-rate-")) / "pair"
    build_encoder_pair(resolve_weights_folder("minilm-l6"), out, seq_length=128)
    loaded = LoadedEncoder.load(EncoderPair(out))
    result: dict[str, float] = {"mails": len(mails)}
    for runtime in runtimes:
        for corpus, texts in corpora.items():
            vectors = {}
            for precision in ("float32", "bfloat16"):
                choice = EmbeddingChoice(precision=precision, runtime=runtime)
                embedder = EncoderEmbedder(loaded, choice)
                rates = []
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    vectors[precision] = embedder.embed(texts)
                    rates.append(len(texts) / (time.perf_counter() - started))
                result[f"{runtime}_{precision}_{corpus}_texts_per_s"] = round(max(rates), 1)
            cosine = np.sum(vectors["float32"] * vectors["bfloat16"], axis=1)
            result[f"{runtime}_{corpus}_bfloat16_cosine_min"] = round(float(cosine.min()), 5)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
