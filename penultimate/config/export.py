"""The export stage's config: how a trained classifier becomes a verified SavedModel."""

from __future__ import annotations

from pydantic import Field

from penultimate.config.base import _Config


class ExportConfig(_Config):
    """How a classifier artifact becomes a SavedModel artifact."""

    verify_texts: int = Field(
        64, ge=8, le=4096, description="Held-out texts the reloaded SavedModel is checked on."
    )
