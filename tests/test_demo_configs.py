"""Every config file in configs/demo/ validates against the model of the command that reads it, so
the README's examples and `make demo` cannot rot silently."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from conftest import REPO
from penultimate.config import (
    IngestConfig,
    PipelineConfig,
    ProbeConfig,
    TrainConfig,
    load_config,
)

MODELS: dict[str, type[BaseModel]] = {
    "ingest.yaml": IngestConfig,
    "train.yaml": TrainConfig,
    "pipeline.yaml": PipelineConfig,
    "probe.yaml": ProbeConfig,
}


def test_every_demo_config_has_a_model() -> None:
    assert {path.name for path in (REPO / "configs" / "demo").glob("*.yaml")} == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_demo_config_validates(name: str) -> None:
    config = load_config(MODELS[name], Path(REPO / "configs" / "demo" / name))
    assert isinstance(config, MODELS[name])
