"""The README's generated configuration reference: up to date with the pydantic models, complete,
and rewritten by its command.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO
from penultimate.config import ClusterConfig, DropoutSpec, IngestConfig, PipelineConfig
from penultimate.config_reference import (
    END_MARKER,
    FIX_COMMAND,
    START_MARKER,
    documented_models,
    main,
    readme_section,
    render_reference,
)
from penultimate.errors import InputError

README = REPO / "README.md"


def test_the_readme_reference_matches_the_models() -> None:
    assert readme_section(README) == render_reference(), (
        f"README.md's configuration reference is out of date; run `{FIX_COMMAND}`"
    )


def test_every_model_and_field_is_documented() -> None:
    models = documented_models()
    # Nested models are found through the fields that use them.
    assert DropoutSpec in models
    assert models.index(IngestConfig) < models.index(PipelineConfig)
    reference = render_reference()
    for model in models:
        assert f"### `{model.__name__}`" in reference
        undocumented = [name for name, field in model.model_fields.items() if not field.description]
        assert undocumented == [], f"{model.__name__} fields without a description"


def test_a_row_shows_type_default_bounds_and_description() -> None:
    reference = render_reference()
    assert "| `shard_rows` | int | `2000` | >= 1 | Rows per output Parquet shard. |" in reference
    assert (
        "| `algorithm` | str | `kmeans` | one of `kmeans`, `minibatch_kmeans`, `hdbscan`, "
        "`agglomerative` |" in reference
    )
    assert "| `k_range` | tuple[int, int] \\| null | `null` |  |" in reference
    # Placeholders are code spans (`hidden:i`): a bare `<i>` vanishes as an HTML tag on GitHub
    # and in the Prefect UI's parameter descriptions.
    assert "`hidden:i` (after hidden layer i, from 0)" in reference and "<i>" not in reference


def test_the_command_rewrites_a_stale_section_and_then_finds_it_up_to_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    shutil.copy(README, readme)
    stale = readme.read_text().replace(ClusterConfig.model_fields["seed"].description or "", "old")
    readme.write_text(stale)
    assert readme_section(readme) != render_reference()

    assert main([str(readme)]) == 0
    assert readme_section(readme) == render_reference()
    # Only the section changes.
    rewritten = readme.read_text()
    assert rewritten.startswith(stale.split(START_MARKER)[0])
    assert rewritten.endswith(stale.split(END_MARKER)[1])
    assert main([str(readme)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{readme}: updated",
        f"{readme}: already up to date",
    ]


def test_a_readme_without_the_markers_is_an_error_naming_them(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# a project\n")
    with pytest.raises(InputError, match="config-reference:start") as raised:
        readme_section(readme)
    assert START_MARKER in str(raised.value) and END_MARKER in str(raised.value)
    assert main([str(readme)]) == 2
