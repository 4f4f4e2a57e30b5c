"""Standalone check of an exported classifier, run in a fresh Python by `export.verify_export`.

It imports only tensorflow and tensorflow_text, proving that is all a consumer needs. It starts
before the SavedModel exists and reads the saved folder, expected outputs and report path from
stdin, one per line, so its imports overlap the exporter's save.
"""

import json
import sys

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the preprocessor's ops)

# Printed to stdout as each check finishes, for the exporter's progress bar.
STEPS = ("loaded", "batch size 1", "batch size 7", "batch size 64", "repeat, mc, encode")


def step_done(name: str) -> None:
    print(f"step {name}", flush=True)


def main(saved_dir: str, expected_file: str, report_file: str) -> None:
    model = tf.saved_model.load(saved_dir)
    step_done("loaded")
    expected = np.load(expected_file, allow_pickle=True)
    texts = [str(t) for t in expected["texts"]]
    serve, embed = model.signatures["serving_default"], model.signatures["embed"]
    diffs: dict[str, float] = {}
    for size in (1, 7, 64):
        probabilities, embeddings = [], []
        for start in range(0, len(texts), size):
            batch = tf.constant(texts[start : start + size])
            probabilities.append(serve(text=batch)["probabilities"].numpy())
            embeddings.append(embed(text=batch)["embedding"].numpy())
        diffs[f"probabilities_batch_{size}"] = float(
            np.abs(np.concatenate(probabilities) - expected["probabilities"]).max()
        )
        diffs[f"embedding_batch_{size}"] = float(
            np.abs(np.concatenate(embeddings) - expected["embedding"]).max()
        )
        step_done(f"batch size {size}")
    everything = tf.constant(texts)
    first, second = embed(text=everything)["embedding"], embed(text=everything)["embedding"]
    diffs["embedding_repeat"] = float(np.abs(first.numpy() - second.numpy()).max())
    mc = model.signatures["predict_mc"](text=everything[:4], samples=tf.constant(3))
    encode = model.signatures["encode"](text=everything[:2])
    served = embed(text=everything[:2])["embedding"].numpy()
    diffs["encode_penultimate"] = float(np.abs(encode["penultimate"].numpy() - served).max())
    step_done("repeat, mc, encode")
    report = {
        "max_abs_diff": diffs,
        "signatures": describe_signatures(model),
        "predict_mc_shape": mc["mean"].shape.as_list(),
        "encode_outputs": sorted(encode),
    }
    with open(report_file, "w") as handle:
        json.dump(report, handle)


def describe_signatures(model: tf.Module) -> dict:
    """Every signature's inputs and outputs as [dtype, shape]."""
    return {
        name: {
            "inputs": {
                key: [str(spec.dtype.name), spec.shape.as_list()]
                for key, spec in function.structured_input_signature[1].items()
            },
            "outputs": {
                key: [str(spec.dtype.name), spec.shape.as_list()]
                for key, spec in function.structured_outputs.items()
            },
        }
        for name, function in model.signatures.items()
    }


if __name__ == "__main__":
    main(*[sys.stdin.readline().strip() for _ in range(3)])
