"""penultimate: train text classifiers with configurable dropout, export, embed and cluster.

Importing the package selects tf-keras for TensorFlow (TF-Hub layers need it), so import it first.
"""

import os
import sys

# tensorflow_hub.KerasLayer is a tf-keras layer; TensorFlow 2.21 picks Keras 3 unless this is set
# before TensorFlow's first import, after which the choice can no longer change.
if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError(
        "TensorFlow was imported before penultimate without TF_USE_LEGACY_KERAS=1; "
        "import penultimate first or set TF_USE_LEGACY_KERAS=1 in the environment."
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"

from penultimate.console import silence_tensorflow_startup

silence_tensorflow_startup()

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # `penultimate.load_embeddings` is imported on first use, so `import penultimate` (which every
    # CLI call and worker does) stays free of polars and pyarrow.
    if name == "load_embeddings":
        from penultimate.embeddings import load_embeddings

        return load_embeddings
    raise AttributeError(f"module 'penultimate' has no attribute {name!r}")
