"""Inspecting the store: `penultimate ls`, `show`, `gc` and `--version` on real stores built in tmp
folders (dataset, features, embedding shards, embeddings and clusters, as the flows lay them out,
without TensorFlow), and `load_embeddings` with texts and clusters."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from penultimate import load_embeddings
from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.cli import main
from penultimate.cluster import EmbeddingShards
from penultimate.cluster_report import write_cluster_artifact
from penultimate.config import ClusterConfig, EmbeddingChoice
from penultimate.embeddings import SHARD_FILE, embeddings_table
from penultimate.errors import InputError
from penultimate.ingest import dataset_shard_entries, split_of, write_dataset
from penultimate.inspection import store_artifacts
from penultimate.shard_features import (
    DEFAULT_PASS,
    FEATURES_FILE,
    features_key,
    l2_normalize,
    read_features,
    read_shard,
    write_features,
)
from penultimate.stages import (
    CLUSTERS_STAGE,
    DATASET_STAGE,
    EMBEDDING_SHARD_STAGE,
    EMBEDDINGS_STAGE,
    ENCODER_STAGE,
    FEATURES_STAGE,
)
from penultimate.store_gc import plan_gc

FEATURE = "layer_1_mean"
DIM = 8


@dataclass(frozen=True)
class Chain:
    """The keys of one corpus's artifacts, ingest to clusters."""

    dataset: str
    features: list[str]
    shards: list[str]
    embeddings: str
    clusters: str

    def keys(self) -> set[str]:
        return {self.dataset, *self.features, *self.shards, self.embeddings, self.clusters}


def mails(tag: str, rows: int, seed: int) -> pl.DataFrame:
    """Labelled mails with a `group` passthrough column, split as ingest splits them."""
    ids = [f"{tag}-{i:03d}" for i in range(rows)]
    labels = ["spam" if i % 2 else "ham" for i in range(rows)]
    groups = [f"{label}_{i % 3}" for i, label in enumerate(labels)]
    texts = [f"{label} mail {i} from {tag} seed {seed}" for i, label in enumerate(labels)]
    frame = pl.DataFrame({"id": ids, "text": texts, "label": labels, "group": groups})
    ratios = {"train": 0.6, "val": 0.2, "test": 0.2}
    return frame.with_columns(split_of(frame["id"], ratios, "penultimate"))


def publish_features(
    store: ArtifactStore, encoder: ArtifactRef, shard: Path, sha256: str, vectors: np.ndarray
) -> ArtifactRef:
    """A features artifact of one dataset shard, as an encoder pass publishes it."""
    rows = read_shard(shard)

    def fill(out: Path) -> dict:
        write_features(
            out / FEATURES_FILE, rows["id"], np.full(rows.height, 12), {FEATURE: vectors}
        )
        return {"rows": rows.height, "encoded_texts": rows.height, "copied_from": None,
                "choices": [FEATURE], "source_shard": store.relative(shard)}  # fmt: skip

    key = features_key([FEATURE], sha256, DEFAULT_PASS, 2)
    return store.publish(FEATURES_STAGE, key, fill, [encoder]).ref


def publish_embedding_shard(
    store: ArtifactStore,
    encoder: ArtifactRef,
    shard: Path,
    sha256: str,
    features: ArtifactRef,
    choice: EmbeddingChoice,
) -> ArtifactRef:
    """An embedding-shard artifact made from a features artifact, as `FeatureEmbedder` makes it."""
    rows = read_shard(shard)

    def fill(out: Path) -> dict:
        _, _, named = read_features(features, [FEATURE], rows["id"])
        table = embeddings_table(rows, l2_normalize(named[FEATURE]), "float32")
        pq.write_table(table, out / SHARD_FILE)
        return {"rows": rows.height, "dim": DIM, "truncated": 0, "encoded_texts": 0,
                "features": features.key, "choice_blocks": None,
                "source_shard": store.relative(shard)}  # fmt: skip

    key = {"embedding": choice, "splits": None, "shard": sha256}
    return store.publish(EMBEDDING_SHARD_STAGE, key, fill, [encoder]).ref


def build_chain(store: ArtifactStore, encoder: ArtifactRef, tag: str, seed: int) -> Chain:
    """A dataset of three shards, per-shard features and embedding shards made from them, the
    embeddings artifact listing the shards, and k-means clusters of it: the flows' layout."""
    frame = mails(tag, 40, seed)
    dataset = store.publish(
        DATASET_STAGE, {"source": tag}, lambda out: write_dataset(frame, {}, out, 15)
    ).ref
    rng = np.random.default_rng(seed)
    centres = {"ham": rng.normal(size=DIM) * 3, "spam": rng.normal(size=DIM) * 3}
    choice = EmbeddingChoice(layers=[1])
    features, shards, rows = [], [], []
    for path, sha256 in dataset_shard_entries(store, dataset):
        labels = read_shard(Path(path))["label"]
        vectors = np.stack([centres[label] + rng.normal(size=DIM) for label in labels])
        features.append(publish_features(store, encoder, Path(path), sha256, vectors))
        shards.append(
            publish_embedding_shard(store, encoder, Path(path), sha256, features[-1], choice)
        )
        rows.append(len(labels))
    listed = [{"key": s.key, "rows": n} for s, n in zip(shards, rows, strict=True)]
    embeddings = store.publish(
        EMBEDDINGS_STAGE,
        {"embedding": choice, "splits": None},
        lambda out: {"rows": sum(rows), "dim": DIM, "encoded_texts": 0, "shards": listed},
        [dataset, encoder, *shards],
    ).ref
    config = ClusterConfig(k=2)
    clusters = store.publish(
        CLUSTERS_STAGE,
        config.model_dump(exclude={"embeddings"}),
        lambda out: write_cluster_artifact(EmbeddingShards.open(embeddings), config, out),
        [embeddings],
    ).ref
    return Chain(
        dataset.key,
        [f.key for f in features],
        [s.key for s in shards],
        embeddings.key,
        clusters.key,
    )


@dataclass(frozen=True)
class Store:
    root: Path
    encoder: str
    old: Chain  # published first
    new: Chain
    orphan: str  # a dataset nothing uses

    def uri(self, stage: str, key: str) -> str:
        return str(self.root / stage / key)

    def keys(self) -> set[str]:
        return {self.encoder, self.orphan, *self.old.keys(), *self.new.keys()}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("inspect") / "store"
    store = ArtifactStore(root)

    def fill_encoder(out: Path) -> dict:
        (out / "encoder.json").write_text('{"num_layers": 2}')
        return {"num_layers": 2, "hidden_size": DIM, "seq_length": 16, "origin": "test"}

    encoder = store.publish(ENCODER_STAGE, {"source": "test"}, fill_encoder).ref
    orphan = store.publish(
        DATASET_STAGE, {"source": "orphan"}, lambda out: write_dataset(mails("o", 5, 9), {}, out, 5)
    ).ref
    old = build_chain(store, encoder, "old", seed=1)
    new = build_chain(store, encoder, "new", seed=2)
    return Store(root, encoder.key, old, new, orphan.key)


@pytest.fixture
def built(template: Store, tmp_path: Path) -> Store:
    """A copy of the module's store for a test to change (a moved store keeps working)."""
    root = tmp_path / "store"
    shutil.copytree(template.root, root)
    return Store(root, template.encoder, template.old, template.new, template.orphan)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def present(root: Path) -> set[str]:
    """Keys of the artifact folders under a store root (any stage, valid or not)."""
    return {p.name for p in root.glob("*/*") if p.is_dir()}


def test_ls_lists_every_artifact_newest_first_with_headline_and_size(
    template: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "--store", str(template.root), "ls")
    assert code == 0
    header, *lines, footer = out.splitlines()
    assert header.split() == ["STAGE", "KEY", "CREATED", "(UTC)", "SIZE", "HEADLINE"]
    assert len(lines) == len(template.keys())
    assert {line.split()[1] for line in lines} == template.keys()
    by_key = {line.split()[1]: line for line in lines}
    embeddings = by_key[template.new.embeddings]
    assert re.match(
        r"embeddings +\w{24}  [\d-]{10} [\d:]{8} +\d+\.\d KiB  40 vectors of dim 8", embeddings
    )
    assert "2 clusters; silhouette 0." in by_key[template.new.clusters]
    assert re.search(r"40 rows \(\d+ test, \d+ train, \d+ val\)", by_key[template.new.dataset])
    assert "2 layers, hidden size 8, seq_length 16" in by_key[template.encoder]
    assert "15 rows x 1 vectors, 15 texts through the encoder" in by_key[template.new.features[0]]
    order = ["dataset", "encoder", "features", "embedding-shard", "embeddings", "clusters"]
    stages = [line.split()[0] for line in lines]
    assert stages == sorted(stages, key=order.index)
    # Newest first within a stage: the second chain before the first, the orphan dataset last.
    datasets = [line.split()[1] for line in lines if line.startswith("dataset")]
    assert datasets == [template.new.dataset, template.old.dataset, template.orphan]
    assert re.fullmatch(rf"{len(lines)} artifact\(s\), \d+\.\d [KM]iB, in {template.root}", footer)


def test_ls_one_stage_and_an_unknown_stage(
    template: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "--store", str(template.root), "ls", "embeddings")
    assert code == 0
    keys = [line.split()[1] for line in out.splitlines()[1:-1]]
    assert keys == [template.new.embeddings, template.old.embeddings]
    code, out, _ = cli(capsys, "--store", str(template.root), "ls", "probe")
    assert (code, out.strip()) == (0, f"no probe artifacts in {template.root}")
    code, out, err = cli(capsys, "--store", str(template.root), "ls", "modles")
    assert code == 2 and not out
    assert err.startswith("error: modles: no such stage in ") and err.count("\n") == 1


def test_show_prints_manifest_inputs_rounded_metrics_and_files(
    template: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = template.uri("embeddings", template.new.embeddings)
    code, out, _ = cli(capsys, "show", uri)
    assert code == 0
    assert f"stage:    embeddings\nkey:      {template.new.embeddings}\n" in out
    assert re.search(r"^created:  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$", out, re.M)
    assert "code:     embeddings v2, penultimate 0.1.0" in out
    inputs = out.split("inputs (5):\n")[1].split("config:")[0].splitlines()
    assert inputs == [
        f"  dataset/{template.new.dataset}",
        f"  encoder/{template.encoder}",
        *(f"  embedding-shard/{key}" for key in template.new.shards),
    ]
    assert f"  - key: {template.new.shards[0]}, rows: 15" in out  # the shards, one line each
    code, out, _ = cli(capsys, "show", template.uri("clusters", template.new.clusters))
    assert code == 0
    assert re.search(r"^  silhouette: 0\.\d{1,4}$", out, re.M)
    assert not re.search(r"\d\.\d{6,}", out)  # no 16-digit floats anywhere
    assert re.search(r"^  sizes:\n    0: \d+\n    1: \d+$", out, re.M)  # nested, indented
    assert re.search(r"^  assignments/part-00000\.parquet +\d+(\.\d)? (B|KiB)$", out, re.M)
    assert re.search(r"^  report\.md +\d+(\.\d)? (B|KiB)$", out, re.M)


def test_show_names_a_bad_path_in_one_line(
    template: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in (tmp_path / "nowhere", tmp_path):
        code, out, err = cli(capsys, "show", str(bad))
        assert code == 2 and not out
        assert err.startswith(f"error: {bad}: ") and err.count("\n") == 1


def test_gc_dry_run_deletes_nothing_and_names_the_unreachable(
    built: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # no prefect.yaml here
    before = present(built.root)
    code, out, _ = cli(capsys, "--store", str(built.root), "gc", "--keep-last", "1")
    assert code == 0
    assert present(built.root) == before
    summary, *lines, reason = out.splitlines()
    unreachable = {built.orphan, *built.old.keys()}
    assert re.fullmatch(
        rf"dry run: would delete {len(unreachable)} of {len(before)} artifact\(s\), "
        r"\d+\.\d [KM]iB \(--apply deletes them\)",
        summary,
    )
    assert {line.split()[1] for line in lines} == unreachable
    assert reason.startswith(f"kept {len(before) - len(unreachable)} artifact(s), ")
    assert "the 1 newest of each end stage (clusters), and every artifact they use" in reason
    # With the default of 3, both chains are kept; only the orphan dataset goes.
    code, out, _ = cli(capsys, "--store", str(built.root), "gc")
    assert [line.split()[1] for line in out.splitlines()[1:-1]] == [built.orphan]


def test_gc_apply_deletes_exactly_the_unreachable_and_keeps_pinned_chains(
    built: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The old chain's embeddings are pinned by a deployment parameter (its folder path), so
    # they, their shards, features, dataset and encoder stay; their clusters go.
    (tmp_path / "prefect.yaml").write_text(
        textwrap.dedent(f"""\
            deployments:
              - name: cluster
                entrypoint: flows/cluster.py:cluster
                parameters:
                  config: {{embeddings: {built.uri("embeddings", built.old.embeddings)}}}
              - name: ingest
        """)
    )
    monkeypatch.chdir(tmp_path)
    store = ["--store", str(built.root)]
    code, out, _ = cli(capsys, *store, "gc", "--keep-last", "1", "--apply")
    assert code == 0
    assert present(built.root) == built.keys() - {built.orphan, built.old.clusters}
    assert out.startswith("deleted 2 of ")
    assert "1 named in deployment parameters (prefect.yaml)" in out
    # Without the pin the rest of the old chain goes; the new chain stays whole and readable.
    empty = tmp_path / "none.yaml"
    empty.write_text("deployments: []\n")
    code, out, _ = cli(
        capsys, *store, "gc", "--keep-last", "1", "--deployments", str(empty), "--apply"
    )
    assert code == 0
    assert present(built.root) == {built.encoder, *built.new.keys()}
    assert not [p for p in built.root.glob("*/.*")]  # no trash or staging folders left
    rows, vectors = load_embeddings(
        built.uri("embeddings", built.new.embeddings),
        text=True,
        clusters=built.uri("clusters", built.new.clusters),
    )
    assert vectors.shape == (40, DIM) and rows["text"].null_count() == 0
    code, out, _ = cli(capsys, *store, "gc", "--keep-last", "1")
    assert out.startswith(f"nothing to delete in {built.root}\n")


def test_gc_deletes_users_before_what_they_use(built: Store) -> None:
    plan = plan_gc(store_artifacts(ArtifactStore(built.root)), 1, set())
    order = [a.ref.key for a in plan.delete]
    old = built.old
    assert order.index(old.clusters) < order.index(old.embeddings)
    assert order.index(old.embeddings) < min(order.index(k) for k in old.shards)
    assert max(order.index(k) for k in old.shards) < min(order.index(k) for k in old.features)
    assert max(order.index(k) for k in old.features) < order.index(old.dataset)
    assert plan.end_stages == ["clusters"]


def test_gc_errors_are_one_line(
    built: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("deployments: [\n  - name: x\n    parameters: {a: 1\n")
    not_deployments = tmp_path / "other.yaml"
    not_deployments.write_text("name: something else\n")
    for extra in (
        ["--deployments", str(tmp_path / "missing.yaml")],
        ["--deployments", str(broken)],
        ["--deployments", str(not_deployments)],
        ["--keep-last", "-1"],
    ):
        code, out, err = cli(capsys, "--store", str(built.root), "gc", *extra)
        assert code == 2 and not out and err.startswith("error: ") and err.count("\n") == 1
    assert present(built.root) == built.keys()


def test_load_embeddings_gives_passthrough_columns_text_and_clusters(built: Store) -> None:
    uri = built.uri("embeddings", built.new.embeddings)
    rows, vectors = load_embeddings(uri)
    assert rows.columns == ["id", "label", "group", "split"]
    dataset = pl.read_parquet(
        sorted((built.root / "dataset" / built.new.dataset).rglob("*.parquet"))
    )
    assert rows["id"].to_list() == dataset["id"].to_list()  # the shards' order
    assert rows["group"].to_list() == dataset["group"].to_list()
    assert vectors.shape == (40, DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-5)
    with_text, _ = load_embeddings(uri, text=True)
    assert with_text["text"].to_list() == dataset["text"].to_list()
    clusters = built.uri("clusters", built.new.clusters)
    clustered, _ = load_embeddings(uri, clusters=clusters)
    assignments = pl.read_parquet(sorted(Path(clusters, "assignments").glob("*.parquet")))
    assert clustered["cluster"].to_list() == assignments["cluster"].to_list()
    assert set(clustered["cluster"]) == {0, 1}
    # k-means on two well-separated labels: each cluster is one label.
    assert clustered.group_by("cluster").agg(pl.col("label").n_unique())["label"].max() == 1


def test_load_embeddings_errors_name_the_folder(built: Store) -> None:
    embeddings = built.uri("embeddings", built.new.embeddings)
    dataset = built.uri("dataset", built.new.dataset)
    with pytest.raises(InputError, match=re.escape(dataset) + ": a 'dataset' artifact folder"):
        load_embeddings(dataset)
    other = built.uri("clusters", built.old.clusters)
    with pytest.raises(
        InputError,
        match=re.escape(
            f"{other}: clusters of embeddings {built.old.embeddings}, not of {embeddings}"
        ),
    ):
        load_embeddings(embeddings, clusters=other)
    shutil.rmtree(built.root / "embedding-shard" / built.new.shards[1])
    with pytest.raises(InputError, match=f"{built.new.shards[1]} is missing or incomplete$"):
        load_embeddings(embeddings)


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"penultimate {importlib.metadata.version('penultimate')}\n"


def test_inspection_commands_import_neither_tensorflow_nor_prefect(built: Store) -> None:
    script = textwrap.dedent(f"""\
        import sys
        from penultimate.cli import main
        store = ["--store", {str(built.root)!r}]
        assert main([*store, "ls"]) == 0
        assert main(["show", {built.uri("clusters", built.new.clusters)!r}]) == 0
        assert main([*store, "gc", "--keep-last", "1"]) == 0
        loaded = {{"tensorflow", "prefect"}} & set(sys.modules)
        assert not loaded, loaded
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
