"""Embedding extraction library: the encoder embedder against the sentence-transformers fixture,
layer/pooling combinations, batch-size independence, and the per-shard unit of work."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import FIXTURES
from penultimate.config import EmbedConfig, EmbeddingChoice, Precision, Runtime
from penultimate.embed import EncoderEmbedder, ShardError, extract_shard_embeddings
from penultimate.embeddings import read_embeddings
from penultimate.encoders.openvino_runtime import OpenVinoEncoder, import_openvino
from penultimate.encoders.pair import EncoderPair
from penultimate.errors import InputError
from penultimate.features import LoadedEncoder, encoder_choice_names, load_encoder
from penultimate.shard_features import EncoderPass, check_runtime_installed

REFERENCE = json.loads((FIXTURES / "minilm_reference.json").read_text())
ARRAYS = np.load(FIXTURES / "minilm_reference.npz")


@pytest.fixture(scope="module")
def loaded(minilm_pair: Path) -> LoadedEncoder:
    return load_encoder(EncoderPair(minilm_pair))  # the process's one copy, as tasks share it


def test_default_choice_reproduces_sentence_transformers(loaded: LoadedEncoder) -> None:
    vectors = EncoderEmbedder(loaded, EmbeddingChoice(), batch_size=16).embed(
        REFERENCE["sentences"]
    )
    assert (np.sum(vectors * ARRAYS["embeddings"], axis=1) >= 0.9999).all()


def test_all_choices_is_every_single_choice_side_by_side_from_one_pass(
    loaded: LoadedEncoder,
) -> None:
    texts = REFERENCE["sentences"][:8]
    grid = EncoderEmbedder(loaded, EmbeddingChoice(source="all_choices"))
    names = [block["name"] for block in grid.choice_blocks]
    assert names == encoder_choice_names(6) and {b["dim"] for b in grid.choice_blocks} == {384}
    vectors = grid.embed(texts)
    assert vectors.shape == (8, 19 * 384)
    for layer, pooling in [(0, "cls"), (2, "max"), (5, "mean"), (-1, "pooled")]:
        single = EmbeddingChoice(layers=[layer], pooling=pooling)
        name = "pooled" if pooling == "pooled" else f"layer_{layer}_{pooling}"
        start = 384 * names.index(name)
        np.testing.assert_allclose(
            vectors[:, start : start + 384],
            EncoderEmbedder(loaded, single).embed(texts),
            atol=1e-5,
        )
    with pytest.raises(ValueError, match="all_choices takes every layer and pooling"):
        EmbeddingChoice(source="all_choices", layers=[-2])


def test_results_do_not_depend_on_batch_size(loaded: LoadedEncoder) -> None:
    texts = REFERENCE["sentences"]
    full = EncoderEmbedder(loaded, EmbeddingChoice(), batch_size=64).embed(texts)
    for size in (1, 7):
        other = EncoderEmbedder(loaded, EmbeddingChoice(), batch_size=size).embed(texts)
        assert np.abs(other - full).max() <= 1e-5


def test_bfloat16_precision_is_close_to_float32_but_really_bfloat16(
    loaded: LoadedEncoder,
) -> None:
    texts = REFERENCE["sentences"]
    exact = EncoderEmbedder(loaded, EmbeddingChoice()).embed(texts)
    fast = EncoderEmbedder(loaded, EmbeddingChoice(precision="bfloat16")).embed(texts)
    cosine = np.sum(exact * fast, axis=1)
    assert cosine.min() >= 0.999
    assert np.abs(exact - fast).max() > 1e-4  # bfloat16 matmuls are really in use
    with pytest.raises(ValueError, match="bfloat16 runs a bare encoder"):
        EmbeddingChoice(source="penultimate", precision="bfloat16")


def test_openvino_runtime_runs_the_same_encoder(loaded: LoadedEncoder) -> None:
    texts = REFERENCE["sentences"]
    long_texts = [" ".join(texts)] * 2 + texts[:3]  # 2 texts of several windows each

    def embed(texts: list[str], **choice: object) -> np.ndarray:
        return EncoderEmbedder(loaded, EmbeddingChoice.model_validate(choice)).embed(texts)

    exact = embed(texts, runtime="openvino")
    assert (np.sum(exact * ARRAYS["embeddings"], axis=1) >= 0.9999).all()
    assert np.abs(exact - embed(texts)).max() <= 1e-5
    fast = embed(texts, runtime="openvino", precision="bfloat16")
    assert np.sum(exact * fast, axis=1).min() >= 0.999
    assert np.abs(exact - fast).max() > 1e-4  # OpenVINO really runs bfloat16
    # A graph cut after layer 2, and windows of long texts.
    chunked = {"long_text": "chunk", "layers": [2], "pooling": "max"}
    np.testing.assert_allclose(
        embed(long_texts, runtime="openvino", **chunked), embed(long_texts, **chunked), atol=1e-5
    )
    for bad in ({"precision": "bfloat16"}, {"runtime": "openvino"}):
        with pytest.raises(ValueError, match=f"{next(iter(bad.values()))} runs a bare encoder"):
            EmbeddingChoice.model_validate({"source": "penultimate", **bad})
    with pytest.raises(ValueError, match=r"embedding\.runtime: openvino runs a bare encoder"):
        EmbedConfig(embedding=EmbeddingChoice(runtime="openvino"), export="x")
    # OpenVINO features are an artifact of their own; TensorFlow's keys are as they were.
    assert EncoderPass(runtime=Runtime.openvino).key() == {
        "precision": "float32",
        "runtime": "openvino",
    }
    assert EncoderPass().key() == {"precision": "float32"}


def test_openvino_keeps_to_its_threads_and_serves_threads_at_once(loaded: LoadedEncoder) -> None:
    serving = loaded.encoder.signatures["serving_default"]
    encoder = OpenVinoEncoder(serving, ["encoder_outputs_0"], Precision.float32, 1)
    assert encoder.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    # Dask workers share the machine: a pinned worker of one thread took the same core as its
    # neighbour (half the throughput each).
    assert encoder.compiled.get_property("ENABLE_CPU_PINNING") is False
    # A Dask worker may run two shards in threads at once.
    batches = [loaded.tokenize(["a short text"]), loaded.tokenize(REFERENCE["sentences"])]
    expected = [encoder(batch)["encoder_outputs_0"] for batch in batches]
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda i: encoder(batches[i % 2])["encoder_outputs_0"], range(32)))
    for i, output in enumerate(outputs):
        np.testing.assert_array_equal(output, expected[i % 2])


def test_openvino_runtime_not_installed_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` meets without it
    with pytest.raises(InputError, match=r"pip install 'penultimate\[openvino\]'"):
        import_openvino()
    # The embed flow checks before it starts a local cluster; an existing cluster's workers may
    # have it where the client has not.
    choice = EmbeddingChoice(runtime="openvino")
    with pytest.raises(InputError, match=r"pip install 'penultimate\[openvino\]'"):
        check_runtime_installed(choice, local_workers=True)
    check_runtime_installed(choice, local_workers=False)
    check_runtime_installed(EmbeddingChoice(), local_workers=True)


def test_layers_combine_and_pool(loaded: LoadedEncoder) -> None:
    texts = ["one short text", "", "a second, slightly longer text about nothing"]

    def embed(**choice: object) -> np.ndarray:
        config = EmbeddingChoice.model_validate({"normalize": False, **choice})
        return EncoderEmbedder(loaded, config).embed(texts)

    second_last, last = embed(layers=[-2]), embed(layers=[-1])
    np.testing.assert_allclose(embed(layers=[-2, -1]), (second_last + last) / 2, atol=1e-6)
    np.testing.assert_allclose(
        embed(layers=[-2, -1], combine="concat"), np.hstack([second_last, last]), atol=1e-6
    )
    mean_max = embed(pooling="mean_max")
    assert mean_max.shape == (3, 768)
    np.testing.assert_allclose(mean_max[:, :384], last, atol=1e-6)
    assert np.isfinite(embed(pooling="max")).all()  # the empty text too
    assert embed(pooling="pooled").shape == (3, 384)
    with pytest.raises(ValueError, match="use layers"):
        EmbeddingChoice(pooling="pooled", layers=[-2])


def test_the_graph_is_traced_when_the_embedder_is_built(loaded: LoadedEncoder) -> None:
    # So a worker's first shard measures embedding, not tracing; one trace serves every shape.
    embedder = EncoderEmbedder(loaded, EmbeddingChoice())
    assert embedder._run.experimental_get_tracing_count() == 1
    embedder.embed(["a short text", "a much longer text " * 40])
    assert embedder._run.experimental_get_tracing_count() == 1


def test_shard_embeddings_keep_ids_order_and_passthrough(
    loaded: LoadedEncoder, tmp_path: Path
) -> None:
    shard = tmp_path / "part-00000.parquet"
    pl.DataFrame(
        {
            "id": ["b", "a", "c", "d"],
            "text": ["spam spam spam", "hello there " * 200, "", None],
            "label": ["spam", "ham", "ham", "spam"],
            "split": ["train", "test", "train", "val"],
            "group": ["spam_2", "easy_ham", "hard_ham", "spam"],
        }
    ).write_parquet(shard)
    out = tmp_path / "emb.parquet"
    choice = EmbeddingChoice(dtype="float16")
    stats = extract_shard_embeddings(
        EncoderEmbedder(loaded, choice), shard, "sha", out, choice, None
    )
    assert (stats["rows"], stats["dim"], stats["truncated"]) == (4, 384, 1)  # 402 tokens > 128
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), 384)
    rows, matrix = read_embeddings([out])
    assert rows["id"].to_list() == ["b", "a", "c", "d"]
    assert rows.columns == ["id", "label", "split", "group"]  # every column but the text
    assert rows["label"].to_list() == ["spam", "ham", "ham", "spam"]
    assert matrix.shape == (4, 384) and not matrix.flags.owndata  # a view on Arrow's buffer
    np.testing.assert_allclose(np.linalg.norm(matrix.astype(np.float32), axis=1), 1, atol=1e-3)
    only_train = tmp_path / "train.parquet"
    extract_shard_embeddings(
        EncoderEmbedder(loaded, choice), shard, "sha", only_train, choice, ["train"]
    )
    assert read_embeddings([only_train])[0]["id"].to_list() == ["b", "c"]


def test_bad_shards_are_named(loaded: LoadedEncoder, tmp_path: Path) -> None:
    embedder = EncoderEmbedder(loaded, EmbeddingChoice())
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(ShardError, match=r"corrupt\.parquet: cannot read"):
        extract_shard_embeddings(embedder, corrupt, "sha", tmp_path / "o", EmbeddingChoice(), None)
    no_text = tmp_path / "no_text.parquet"
    pl.DataFrame({"id": ["1"], "body": ["x"]}).write_parquet(no_text)
    with pytest.raises(ShardError, match=r"no_text\.parquet: column\(s\) \['text'\] missing"):
        extract_shard_embeddings(embedder, no_text, "sha", tmp_path / "o", EmbeddingChoice(), None)
