"""Clustering library on embeddings artifacts written through the real artifact store: every
algorithm and projection, streamed assignment, metrics, report, maps, and each bad input."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from conftest import run_cli
from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.cluster import (
    NOISE,
    ClusterInputError,
    EmbeddingShards,
    Projector,
    fit_clusters,
    validate_cluster_inputs,
)
from penultimate.cluster_report import (
    distinctive_terms,
    legend_colours,
    natural_key,
    stratified_sample,
    write_cluster_artifact,
)
from penultimate.config import ClusterConfig, Projection
from penultimate.email_text import email_to_text
from penultimate.embeddings import SHARD_FILE
from penultimate.stages import EMBEDDING_SHARD_STAGE, EMBEDDINGS_STAGE

TOPICS = {
    "space": "rocket orbit launch satellite astronaut",
    "cooking": "recipe oven garlic butter simmer",
    "finance": "stock market dividend investor bond",
}


def embeddings_artifact(store: Path, shards: list[tuple[pl.DataFrame, np.ndarray]]) -> ArtifactRef:
    """An embeddings artifact laid out exactly as the embed flow writes one: a dataset shard and
    an embedding-shard artifact per shard, and the embeddings artifact listing them."""
    artifacts = ArtifactStore(store)
    refs, rows = [], []
    for index, (frame, vectors) in enumerate(shards):
        source = store / "dataset" / f"part-{index:05d}.parquet"
        source.parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(source)

        def write(
            out: Path,
            frame: pl.DataFrame = frame,
            vectors: np.ndarray = vectors,
            source: Path = source,
        ) -> dict:
            # Built by hand, not with embeddings_table, which refuses NaN: another producer may not.
            embedding = pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.ravel()), vectors.shape[1]
            )
            table = frame.select("id", "label").to_arrow().append_column("embedding", embedding)
            pq.write_table(table, out / SHARD_FILE)
            return {
                "rows": frame.height,
                "dim": vectors.shape[1],
                "source_shard": artifacts.relative(source),
            }

        refs.append(artifacts.publish(EMBEDDING_SHARD_STAGE, {"shard": index, "n": len(frame),
                    "sum": float(np.nansum(vectors))}, write).ref)  # fmt: skip
        rows.append(frame.height)
    return artifacts.publish(
        EMBEDDINGS_STAGE,
        {"shards": [r.key for r in refs]},
        lambda out: {
            "shards": [{"key": r.key, "rows": n} for r, n in zip(refs, rows, strict=True)]
        },
        refs,
    ).ref


def topic_shards(
    points_per_topic: int, shards: int, seed: int = 0
) -> list[tuple[pl.DataFrame, np.ndarray]]:
    """Three well-separated topics in 32 dimensions, with texts that name them, split in shards."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(TOPICS), 32)) * 4
    ids, texts, labels, vectors = [], [], [], []
    for t, (topic, words) in enumerate(TOPICS.items()):
        for i in range(points_per_topic):
            ids.append(f"{topic}-{i}")
            texts.append(f"{words} note {i}")
            labels.append(topic)
            vectors.append(centres[t] + rng.normal(size=32))
    order = rng.permutation(len(ids))
    frame = pl.DataFrame({"id": ids, "text": texts, "label": labels})[order]
    matrix = np.asarray(vectors, np.float32)[order]
    bounds = np.linspace(0, len(ids), shards + 1).astype(int)
    return [(frame[a:b], matrix[a:b]) for a, b in itertools.pairwise(bounds)]


@pytest.fixture
def topics(tmp_path: Path) -> ArtifactRef:
    return embeddings_artifact(tmp_path / "store", topic_shards(60, 4))


@pytest.mark.parametrize(
    "config",
    [
        {"algorithm": "kmeans", "k": 3},
        {"algorithm": "minibatch_kmeans", "k": 3, "reduce_to": 8},
        {"algorithm": "agglomerative", "k": 3, "fit_sample": 100},
        {"algorithm": "hdbscan", "k": None, "min_cluster_size": 10, "projection": "tsne"},
        {"algorithm": "kmeans", "k": None, "k_range": [2, 6], "projection": "umap"},
    ],
    ids=["kmeans", "minibatch-pca", "agglomerative-sampled", "hdbscan-tsne", "k-range-umap"],
)
def test_every_algorithm_recovers_the_topics(
    topics: ArtifactRef, tmp_path: Path, config: dict
) -> None:
    out = tmp_path / "clusters"
    out.mkdir()
    shards = EmbeddingShards.open(topics)
    parsed = ClusterConfig.model_validate(config)
    validate_cluster_inputs(shards, parsed)
    metrics = write_cluster_artifact(shards, parsed, out)
    assert metrics["ari"] >= 0.95 and metrics["nmi"] >= 0.9 and metrics["purity"] >= 0.95
    assert metrics["points"] == 180 and metrics["clusters"] == 3
    assert metrics["silhouette"] > 0.5
    if "k_range" in config:
        assert set(metrics["silhouette_by_k"]) == {"2", "3", "4", "5", "6"}
    assignments = pl.read_parquet(sorted((out / "assignments").glob("*.parquet")))
    assert assignments.columns == ["id", "cluster", "x", "y", "label"]
    source = pl.concat(
        [pl.read_parquet(f) for f in sorted((topics.path.parent.parent / "dataset").glob("*"))]
    )
    assert assignments["id"].to_list() == source["id"].to_list()  # every point, in order
    assert assignments["x"].is_finite().all() and assignments["y"].is_finite().all()
    full = json.loads((out / "metrics.json").read_text())
    for cluster, terms in full["terms"].items():
        mix = full["label_mix"][cluster]
        topic = max(mix, key=mix.get)
        assert set(terms[:5]) == set(TOPICS[topic].split())  # c-TF-IDF names the topic
    report = (out / "report.md").read_text()
    assert report.count("## cluster") == 3 and "Nearest the centroid" in report
    for name in ("map_by_cluster.png", "map_by_label.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    page = (out / "map.html").read_text()
    assert "Plotly.newPlot" in page and "<script src=" not in page  # plotly.js inline: offline
    # Every point in the cluster-coloured and the label-coloured traces, with its hover text.
    ids = pl.concat([f for f, _ in topic_shards(60, 4)])["id"].to_list()
    assert all(page.count(f"\\u003cb\\u003e{i}\\u003c\\u002fb\\u003e") == 2 for i in ids)
    assert "rocket orbit" in page and "colour by label" in page and "all 180 points" in page
    projector = out / "projector"
    assert len((projector / "tensors.tsv").read_text().splitlines()) == 180
    metadata = (projector / "metadata.tsv").read_text().splitlines()
    assert metadata[0] == "id\tcluster\tlabel\ttext" and len(metadata) == 181
    assert 'tensor_path: "tensors.tsv"' in (projector / "projector_config.pbtxt").read_text()
    if parsed.projection == Projection.umap:  # here, where numba has compiled UMAP already
        check_umap_keeps_the_fit_coordinates(shards, parsed)


def check_umap_keeps_the_fit_coordinates(shards: EmbeddingShards, config: ClusterConfig) -> None:
    """Points UMAP was fitted on keep the fit's coordinates; only the others go through
    `transform` (which would place a fitted point anew, elsewhere)."""
    fitted = fit_clusters(shards, config.model_copy(update={"k": 3, "k_range": None}))
    projector = Projector(fitted, config.model_copy(update={"projection_sample": 100}))
    points = np.concatenate([matrix for _, _, matrix in shards])
    xy = projector.project(points, np.arange(len(points)))
    fitted_rows = projector._fitted_rows
    assert len(fitted_rows) == 100
    assert np.array_equal(xy[fitted_rows], projector._model.embedding_.astype(np.float32))
    others = np.setdiff1d(np.arange(len(points)), fitted_rows)
    assert np.allclose(xy[others], projector._model.transform(points[others]), atol=1e-5)
    # What the fit compiled is on disk for the next process (umap-learn caches none of it).
    layout = sys.modules["umap.layouts"]._nb_optimize_layout_euclidean_single_epoch
    assert Path(layout._cache._cache_file._index_path).is_file()


def test_hdbscan_noise_is_its_own_group(tmp_path: Path) -> None:
    frame, matrix = topic_shards(40, 1)[0]
    outliers = np.random.default_rng(1).uniform(-60, 60, size=(6, 32)).astype(np.float32)
    frame = pl.concat(
        [
            frame,
            pl.DataFrame(
                {"id": [f"odd-{i}" for i in range(6)], "text": ["odd"] * 6, "label": ["odd"] * 6}
            ),
        ]
    )
    ref = embeddings_artifact(tmp_path / "store", [(frame, np.vstack([matrix, outliers]))])
    out = tmp_path / "c"
    out.mkdir()
    metrics = write_cluster_artifact(
        EmbeddingShards.open(ref), ClusterConfig(algorithm="hdbscan", k=None), out
    )
    assert metrics["noise_points"] >= 6 and metrics["sizes"]["-1"] == metrics["noise_points"]
    assert "## noise" in (out / "report.md").read_text()


def test_minibatch_streams_and_matches_full_kmeans(topics: ArtifactRef) -> None:
    shards = EmbeddingShards.open(topics)
    # A fit sample smaller than one shard: minibatch still sees every point through partial_fit.
    streamed = fit_clusters(
        shards, ClusterConfig(algorithm="minibatch_kmeans", k=3, fit_sample=100)
    )
    exact = fit_clusters(shards, ClusterConfig(algorithm="kmeans", k=3))
    _, matrix = topic_shards(60, 1)[0]
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(exact.assign(matrix), streamed.assign(matrix)) == 1.0
    assert streamed.model.n_steps_ > 1  # type: ignore[union-attr]


def test_distinctive_terms_prefer_what_sets_a_cluster_apart() -> None:
    terms = distinctive_terms(
        {0: ["the spam offer free money", "free money now"], 1: ["meeting notes money agenda"]}, 3
    )
    # `money` is in both clusters: each cluster's own words outrank it.
    assert set(terms[0]) == {"free", "offer", "spam"}
    assert set(terms[1]) == {"agenda", "meeting", "notes"}


def test_distinctive_terms_skip_links_markup_and_contractions() -> None:
    offer = (
        "Don't miss it, you'll love 'em: http://www.pills.example.com/buy.html or mail "
        "sales@pills.example.net <font face=arial>cheap</font>&nbsp;pills! www.cheap.org/now"
    )
    terms = distinctive_terms({0: [offer] * 3, 1: ["Isn't the agenda ready? We've got notes"]}, 10)
    # Equal weights within each cluster here, so alphabetical order.
    assert terms == {
        0: ["cheap", "love", "mail", "miss", "pills"],
        1: ["agenda", "got", "notes", "ready"],
    }


def test_distinctive_terms_of_real_mail_tell_ham_from_spam(corpus_path: Path) -> None:
    """Ham and spam mails of the shared corpus, as clusters: their terms are words, not link
    parts, stop words or pieces of contractions, and they differ."""
    corpus = pl.read_parquet(corpus_path).sort("id")
    texts = {
        cluster: [
            email_to_text(raw).text
            for raw in corpus.filter(pl.col("label") == label)["raw"].head(300)
        ]
        for cluster, label in enumerate(["ham", "spam"])
    }
    assert sum("n't" in text or "'ll" in text for text in texts[0]) > 50  # contractions abound
    assert sum("http://" in text for text in texts[1]) > 100  # and links
    terms = distinctive_terms(texts, 20)
    url_parts = {"http", "https", "www", "com", "net", "org", "html", "htm", "mailto"}
    pieces = {"don", "doesn", "didn", "isn", "wasn", "aren", "won", "couldn", "wouldn", "haven"}
    for words in terms.values():
        assert len(words) == 20
        assert all(len(word) >= 3 and word.isalpha() for word in words), words
        assert not set(words) & (ENGLISH_STOP_WORDS | url_parts | pieces), words
    assert len(set(terms[0]) & set(terms[1])) <= 4, terms
    assert {"linux", "wrote"} <= set(terms[0]) and {"free", "money", "click"} <= set(terms[1])


def bad(
    tmp_path: Path, shards: list[tuple[pl.DataFrame, np.ndarray]], config: ClusterConfig
) -> str:
    ref = embeddings_artifact(tmp_path / "store", shards)
    with pytest.raises(ClusterInputError) as error:
        validate_cluster_inputs(EmbeddingShards.open(ref), config)
    return str(error.value)


def test_k_larger_than_the_points_is_an_error(tmp_path: Path) -> None:
    small = topic_shards(1, 1)
    assert "k: 5 is larger than the number of points (3)" in bad(
        tmp_path, small, ClusterConfig(k=5)
    )


def test_hdbscan_on_fewer_points_than_its_smallest_cluster_is_an_error(tmp_path: Path) -> None:
    small = topic_shards(1, 1)
    config = ClusterConfig(algorithm="hdbscan", min_cluster_size=15)
    assert "min_cluster_size: 15 is larger than the 3 points hdbscan fits on" in bad(
        tmp_path, small, config
    )


def test_fewer_than_two_points_is_an_error(tmp_path: Path) -> None:
    one = [
        (pl.DataFrame({"id": ["a"], "text": ["x"], "label": ["l"]}), np.ones((1, 4), np.float32))
    ]
    ref = embeddings_artifact(tmp_path / "store", one)
    with pytest.raises(ClusterInputError, match="1 point"):
        EmbeddingShards.open(ref)


def test_nan_or_inf_names_the_shard_and_row(tmp_path: Path) -> None:
    shards = topic_shards(10, 3)
    frame, matrix = shards[2]
    matrix = matrix.copy()
    matrix[4, 7] = np.inf
    shards[2] = (frame, matrix)
    message = bad(tmp_path, shards, ClusterConfig(k=3))
    assert "embeddings.parquet: row 4 (id " in message and frame["id"][4] in message
    assert ArtifactStore(tmp_path / "store").artifacts(EMBEDDING_SHARD_STAGE)  # it was a real shard


def test_shards_of_different_dimensions_are_an_error(tmp_path: Path) -> None:
    (a, x), (b, y) = topic_shards(10, 2)
    ref = embeddings_artifact(tmp_path / "store", [(a, x), (b, y[:, :16])])
    with pytest.raises(ClusterInputError, match="dimension 16, but earlier shards have"):
        EmbeddingShards.open(ref)


def test_an_incomplete_embeddings_artifact_is_an_error(topics: ArtifactRef) -> None:
    (topics.path / "manifest.json").unlink()
    with pytest.raises(ClusterInputError, match="not a complete embeddings artifact"):
        EmbeddingShards.open(topics)


def test_a_moved_store_keeps_working(topics: ArtifactRef, tmp_path: Path) -> None:
    # Manifests name shards and inputs by key and files of other artifacts relative to the root.
    total = EmbeddingShards.open(topics).total
    moved_root = tmp_path / "mounted-elsewhere"
    topics.path.parent.parent.rename(moved_root)
    moved = ArtifactStore(moved_root).ref(topics.stage, topics.key)
    shards = EmbeddingShards.open(moved)
    assert shards.total == total == 180
    assert all(f.is_relative_to(moved_root) for f in shards.files + shards.dataset_shards)
    assert all(f.is_file() for f in shards.dataset_shards)


def test_a_damaged_shard_file_is_an_error(topics: ArtifactRef) -> None:
    manifest = ArtifactStore(topics.path.parent.parent).read_manifest(topics)
    key = manifest.metrics["shards"][1]["key"]  # type: ignore[union-attr]
    shard = topics.path.parent.parent / EMBEDDING_SHARD_STAGE.name / key / SHARD_FILE
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ClusterInputError, match="embedding shard missing or damaged"):
        EmbeddingShards.open(topics)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="k_range: need 2 <= lowest <= highest"):
        ClusterConfig(k_range=(4, 3))
    with pytest.raises(ValueError, match="hdbscan finds its own"):
        ClusterConfig(algorithm="hdbscan", k_range=(2, 4))


def test_cli_names_the_bad_field_and_the_incomplete_artifact(
    topics: ArtifactRef, tmp_path: Path
) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text("algorithm: kmeans\nk: 1\n")
    result = run_cli("cluster", "--config", str(config), "--embeddings", topics.uri)
    assert result.returncode == 2 and "cluster.yaml" in result.stderr and "k" in result.stderr
    config.write_text("k: 2\n")
    (topics.path / "manifest.json").unlink()
    result = run_cli("cluster", "--config", str(config), "--embeddings", topics.uri)
    assert result.returncode == 2 and "not a complete artifact" in result.stderr


def test_maps_sample_every_cluster_in_proportion_never_the_first_rows() -> None:
    # Sorted like the demo corpus (ids easy-ham... before spam...): the first 3,000 rows are all
    # one cluster, which is what a head() would show.
    points = pl.DataFrame(
        {"id": [f"p{i}" for i in range(10_000)], "cluster": [0] * 7_000 + [1] * 2_950 + [2] * 50}
    )
    sample = stratified_sample(points, 3_000, "cluster", seed=0)
    sizes = dict(sample["cluster"].value_counts().iter_rows())
    assert sizes == {0: 2_100, 1: 885, 2: 15}
    assert sample["id"].to_list() != points["id"].head(3_000).to_list()
    assert stratified_sample(points, 3_000, "cluster", seed=0).equals(sample)  # seeded
    assert stratified_sample(points.head(500), 3_000, "cluster", seed=0).height == 500


def test_legends_with_many_classes_keep_natural_order_and_the_largest_groups() -> None:
    assert sorted(["group-10", "group-9", "group-1"], key=natural_key) == [
        "group-1", "group-9", "group-10"
    ]  # fmt: skip
    assert sorted([10, NOISE, 2, 1], key=natural_key) == [1, 2, 10, NOISE]
    values = [f"class-{c}" for c in range(50) for _ in range(c + 1)]  # class-49 is the largest
    colours = legend_colours(values)
    named = {v for v, c in colours.items() if c != "#dddddd"}
    assert named == {f"class-{c}" for c in range(31, 50)}  # 19 largest keep a colour
    assert len({colours[v] for v in named}) == 19
    few = legend_colours(["a", "b", "c"])
    assert len(set(few.values())) == 3


def test_a_43_class_map_stays_readable(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = [f"topic-{c}" for c in range(43) for _ in range(12)]
    frame = pl.DataFrame(
        {"id": [f"d{i}" for i in range(len(labels))], "text": ["words"] * len(labels),
         "label": labels}
    )  # fmt: skip
    vectors = rng.normal(size=(len(labels), 16)).astype(np.float32)
    ref = embeddings_artifact(tmp_path / "store", [(frame, vectors)])
    out = tmp_path / "c"
    out.mkdir()
    write_cluster_artifact(EmbeddingShards.open(ref), ClusterConfig(k=43), out)
    from PIL import Image

    for name in ("map_by_cluster.png", "map_by_label.png"):
        width, height = Image.open(out / name).size
        assert width <= 1200 and height <= 800, (name, width, height)


def test_the_pipeline_summary_shows_plots_inline_and_links_over_http(tmp_path: Path) -> None:
    from penultimate.artifacts import ArtifactStore
    from penultimate.pipeline_summary import PipelineRun, StageRun, pipeline_markdown, pipeline_text
    from penultimate.stages import CLUSTERS_STAGE
    from penultimate.ui import files_url

    embeddings = embeddings_artifact(tmp_path / "store", topic_shards(30, 2))
    store = ArtifactStore(tmp_path / "store")
    config = ClusterConfig(k=3)
    clusters = store.publish(
        CLUSTERS_STAGE,
        config.model_dump(mode="json"),
        lambda out: write_cluster_artifact(EmbeddingShards.open(embeddings), config, out),
        [embeddings],
    ).ref
    run = PipelineRun(
        stages={
            "embed": StageRun(artifact=embeddings, computed=False, seconds=0.4),
            "cluster": StageRun(artifact=clusters, computed=True, seconds=1.5),
        }
    )
    links = {"cluster-report": "http://ui.example/artifacts/artifact/1234"}
    markdown = pipeline_markdown(run, store, links)
    assert "![cluster: map_by_label.png](data:image/png;base64," in markdown
    assert f"({files_url()}/clusters/{clusters.key}/map.html)" in markdown
    assert "[cluster-report](http://ui.example/artifacts/artifact/1234)" in markdown
    assert "embed-progress" not in markdown  # no link known: not shown
    assert "- **embed**: cached in 0.4 s; " in markdown
    assert "- **cluster**: computed in 1.5 s; 3 clusters; silhouette" in markdown
    assert "file://" not in markdown
    text = pipeline_text(run, store)
    assert text.splitlines()[1].startswith("cluster  computed in 1.5 s") and "3 clusters" in text
    assert "data:image" not in text
