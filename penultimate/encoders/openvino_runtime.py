"""OpenVINO as the runtime of an encoder SavedModel (`embedding.runtime: openvino`): the loaded
encoder's serving signature converted in memory, cut to the outputs asked for, compiled for the CPU.

An optional extra (`pip install 'penultimate[openvino]'`); TensorFlow still tokenises and pools.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from penultimate.config import Precision
from penultimate.errors import InputError

# OpenVINO's names for the two precisions of `embedding.precision`.
_INFERENCE_PRECISION = {Precision.float32: "f32", Precision.bfloat16: "bf16"}
ENCODER_INPUTS = ("input_word_ids", "input_mask", "input_type_ids")


def import_openvino() -> Any:
    """The `openvino` module, or an InputError saying how to install it."""
    try:
        import openvino
    except ImportError as error:
        raise InputError(
            "embedding.runtime: openvino needs the OpenVINO runtime, an optional extra: "
            "pip install 'penultimate[openvino]'"
        ) from error
    return openvino


class OpenVinoEncoder:
    """A TF-Hub-interface encoder run by OpenVINO: encoder inputs (int32 [batch, seq] arrays) in,
    the chosen outputs out as float32 arrays, named as the SavedModel's serving signature names
    them (`encoder_outputs_<i>` [batch, seq, hidden], `pooled_output` [batch, hidden]).

    Args:
        serving: the loaded encoder's `serving_default` signature (a concrete function).
        outputs: the output names to compute; the graph is cut after them, so layers above the
            highest one asked for are not computed.
        precision: float32 computes in float32 (OpenVINO would pick bfloat16 on CPUs with AMX
            otherwise); bfloat16 lets it run matmuls, attention and GELU in bfloat16.
        threads: CPU threads for inference; 0 = OpenVINO's default (every core).

    Example:
        >>> ov_encoder = OpenVinoEncoder(loaded.encoder.signatures["serving_default"],
        ...                              ["encoder_outputs_5"], Precision.bfloat16)
        >>> ov_encoder(inputs)["encoder_outputs_5"].shape  # (batch, seq, 384)
    """

    def __init__(
        self, serving: Any, outputs: Sequence[str], precision: Precision, threads: int = 0
    ) -> None:
        ov = import_openvino()
        model = ov.convert_model(serving)
        results = {
            name: result for result in model.get_results() for name in result.output(0).get_names()
        }
        missing = sorted(set(outputs) - set(results))
        if missing:
            raise InputError(f"the encoder's serving signature has no output {missing}")
        self.outputs = list(outputs)
        # A model of just the wanted outputs: OpenVINO drops whatever they do not depend on.
        kept = ov.Model(
            [results[name].input_value(0) for name in self.outputs], model.get_parameters()
        )
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _INFERENCE_PRECISION[precision],
            "PERFORMANCE_HINT": "LATENCY",
            # OpenVINO pins each process's threads to cores counted from the first, so two Dask
            # workers of one thread shared one core (benchmarks/RESULTS.md, "Embedding" notes);
            # a single process runs as fast unpinned.
            "ENABLE_CPU_PINNING": False,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(kept, "CPU", config)
        # An infer request serves one call at a time; a Dask worker may run shards in threads.
        self._requests = threading.local()
        self._inputs = {name: port for port in self.compiled.inputs for name in port.get_names()}

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        feed = {self._inputs[name]: np.asarray(inputs[name], np.int32) for name in ENCODER_INPUTS}
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.compiled.create_infer_request()
        result = request.infer(feed)
        # The request reuses its output buffers on the next call: copy them out.
        return {
            name: np.array(result[self.compiled.outputs[i]]) for i, name in enumerate(self.outputs)
        }
