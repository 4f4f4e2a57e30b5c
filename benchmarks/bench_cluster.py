"""Clustering at scale: 100k and 1M embeddings of dimension 384 (real corpus embeddings replicated
with noise), our streaming kmeans and minibatch_kmeans beside a plain full-batch scikit-learn
KMeans on the same data; wall time and peak memory, each run in its own process. Also the quality
of k-means on the corpus' encoder embeddings per k. Writes a benchmarks/RESULTS.md section.

Run with `make bench-cluster` (part of `make bench`); takes ~15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

import penultimate  # noqa: F401  (selects tf-keras before TensorFlow loads)
from benchmarks.results import write_section
from penultimate.artifacts import ArtifactRef, ArtifactStore, open_artifact
from penultimate.cluster import EmbeddingShards, validate_cluster_inputs
from penultimate.cluster_report import write_cluster_artifact
from penultimate.config import ClusterConfig, DaskRunnerConfig, EmbedConfig, IngestConfig
from penultimate.embed import peak_memory_mb
from penultimate.embeddings import SHARD_FILE, read_embeddings
from penultimate.ingest import read_dataset
from penultimate.prefect_server import start_local_server, stop_local_server
from penultimate.stages import EMBEDDING_SHARD_STAGE, EMBEDDINGS_STAGE

K = 8
SHARD_ROWS = 50_000


def replicated_artifact(
    store: Path, base: np.ndarray, texts: list[str], labels: list[str], total: int
) -> ArtifactRef:
    """`total` rows: the base vectors repeated with Gaussian noise (sd 0.02 per dimension, then
    re-normalised), written shard by shard as an embeddings artifact with its dataset shards."""
    rng = np.random.default_rng(0)
    artifacts = ArtifactStore(store)
    refs, rows = [], []
    for index, start in enumerate(range(0, total, SHARD_ROWS)):
        count = min(SHARD_ROWS, total - start)
        picks = rng.integers(len(base), size=count)
        vectors = base[picks] + rng.normal(0, 0.02, size=(count, base.shape[1])).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"r{start + i}" for i in range(count)]
        frame = pl.DataFrame({"id": ids, "text": [texts[p] for p in picks],
                              "label": [labels[p] for p in picks]})  # fmt: skip
        source = store / "dataset" / f"part-{index:05d}.parquet"
        source.parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(source)

        def write(out: Path, frame: pl.DataFrame = frame, vectors: np.ndarray = vectors,
                  source: Path = source) -> dict:  # fmt: skip
            embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 384)
            table = frame.select("id", "label").to_arrow().append_column("embedding", embedding)
            pq.write_table(table, out / SHARD_FILE)
            return {"rows": len(frame), "dim": 384, "source_shard": artifacts.relative(source)}

        refs.append(
            artifacts.publish(EMBEDDING_SHARD_STAGE, {"total": total, "shard": index}, write).ref
        )
        rows.append(count)
    return artifacts.publish(
        EMBEDDINGS_STAGE,
        {"total": total},
        lambda out: {
            "shards": [{"key": r.key, "rows": n} for r, n in zip(refs, rows, strict=True)]
        },
        refs,
    ).ref


def run_one(method: str, embeddings: str, out: str) -> None:
    """One measured run, in its own process: prints seconds and peak memory as JSON."""
    started = time.perf_counter()
    ref = open_artifact(embeddings, "embeddings")
    if method == "sklearn full-batch KMeans":
        from sklearn.cluster import KMeans

        _, matrix = read_embeddings(EmbeddingShards.open(ref).files)
        labels = KMeans(K, n_init=1, random_state=0).fit_predict(np.asarray(matrix))
        assert len(labels) == len(matrix)
    else:
        config = ClusterConfig(algorithm=method, k=K)  # type: ignore[arg-type]
        shards = EmbeddingShards.open(ref)
        validate_cluster_inputs(shards, config)
        Path(out).mkdir(parents=True)
        write_cluster_artifact(shards, config, Path(out))
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_mb": peak_memory_mb()}))


def measure(method: str, embeddings: ArtifactRef, work: Path) -> dict[str, float]:
    out = work / f"out-{method.replace(' ', '-')}-{embeddings.key}"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_cluster", "--run-one", method, embeddings.uri,
         str(out)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    print(method, embeddings.key, info, flush=True)
    return info


def corpus_embeddings(corpus: str, work: Path, mails: int) -> tuple[ArtifactRef, Path]:
    """Mean-pooled encoder embeddings of the first `mails` corpus mails (the embed flow)."""
    from flows.embed import embed
    from flows.ingest import ingest

    source = work / "corpus.parquet"
    frame = pl.read_parquet(corpus)
    # A uniform sample: the corpus file is grouped by label, so its head is all ham.
    frame.sample(min(mails, frame.height), seed=0).write_parquet(source)
    store = work / "store"
    dataset = ingest(
        config=IngestConfig(source=str(source), text_format="email", text_column="raw",
                            shard_rows=1000),
        store_root=str(store),
    )  # fmt: skip
    config = EmbedConfig(runner=DaskRunnerConfig(n_workers=2))
    return embed(config=config, dataset=dataset, store_root=str(store)), store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", default="../shared/data/spamassassin.parquet")
    parser.add_argument("--mails", type=int, default=6046, help="corpus mails to embed")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--run-one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        run_one(*args.run_one)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    home = work / "prefect"
    api_url = start_local_server(home)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            embeddings, store = corpus_embeddings(args.corpus, work, args.mails)
    finally:
        stop_local_server(home)
    manifest = ArtifactStore(store).validate(embeddings)
    assert manifest is not None
    shards = EmbeddingShards.open(embeddings)
    rows, base = read_embeddings(shards.files)
    texts = read_dataset(ArtifactStore(store).resolve(manifest.inputs[0]))
    texts = texts.join(rows.select("id"), on="id", how="semi")
    by_id = dict(zip(texts["id"].to_list(), texts["text"].str.slice(0, 300).to_list(), strict=True))
    base_texts = [by_id[i] for i in rows["id"].to_list()]
    base_labels = rows["label"].cast(pl.String).to_list()

    quality = []
    for k in range(2, 9):
        out = work / f"quality-{k}"
        out.mkdir()
        metrics = write_cluster_artifact(shards, ClusterConfig(k=k), out)
        quality.append(
            f"| {k} | {metrics['silhouette']:.3f} | {metrics['davies_bouldin']:.3f} | "
            f"{metrics['calinski_harabasz']:.0f} | {metrics['ari']:.3f} | {metrics['nmi']:.3f} | "
            f"{metrics['purity']:.3f} |"
        )
        print(quality[-1], flush=True)

    scale_rows = []
    for total in (int(s) for s in args.sizes.split(",")):
        ref = replicated_artifact(
            work / f"x{total}", np.asarray(base), base_texts, base_labels, total
        )
        runs = {m: measure(m, ref, work) for m in
                ("kmeans", "minibatch_kmeans", "sklearn full-batch KMeans")}  # fmt: skip
        plain = runs["sklearn full-batch KMeans"]
        for method, info in runs.items():
            scale_rows.append(
                f"| {total:,} | {method} | {info['seconds']:.1f} | {info['peak_mb']:.0f} | "
                f"{info['seconds'] / plain['seconds']:.2f}x | "
                f"{info['peak_mb'] / plain['peak_mb']:.2f}x |"
            )
        shutil.rmtree(work / f"x{total}", ignore_errors=True)
    write_section(
        "Clustering: quality per k and scale",
        [
            f"Encoder mean embeddings (built-in `minilm-l6`, last layer, L2) of {len(base_texts)} "
            "SpamAssassin mails, k-means per k (internal scores on a sample of 5,000; ARI, NMI "
            "and purity against spam/ham over every mail):",
            "",
            "| k | silhouette | Davies-Bouldin | Calinski-Harabasz | ARI | NMI | purity |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *quality,
            "",
            f"Scale: those embeddings replicated with noise to each size (dimension 384, shards of "
            f"{SHARD_ROWS:,} rows), k={K}. Ours: the whole cluster stage (validation pass, fit, "
            "streamed assignment with PCA map, metrics, report, plots, projector files); "
            "`kmeans` fits on a 50,000-point sample, `minibatch_kmeans` streams every point. "
            "Plain: load everything, scikit-learn `KMeans(n_init=1)` full batch, labels only. Each "
            "run in its own process; peak memory is its VmHWM.",
            "",
            "| points | method | seconds | peak memory MB | time vs plain | memory vs plain |",
            "| --- | --- | --- | --- | --- | --- |",
            *scale_rows,
        ],
        command=" ".join(["make bench-cluster: python -m benchmarks.bench_cluster", *sys.argv[1:]]),
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
