"""The pipeline's own Prefect pieces: a progress artifact on the pipeline run, advanced as each
stage finishes (timing it), and the summary markdown artifact linking every stage's outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.settings import PREFECT_UI_URL

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.pipeline_summary import PipelineRun, StageRun, pipeline_markdown


class PipelineProgress:
    """Times each stage and moves the pipeline run's progress artifact (stages done / all)."""

    def __init__(self, stages: Sequence[str], store: ArtifactStore) -> None:
        self.names, self.store = list(stages), store
        self.started_at = datetime.now(UTC)
        self.stages: dict[str, StageRun] = {}
        self.artifact_id: UUID = create_progress_artifact(  # type: ignore[assignment]
            progress=0.0, key="pipeline-progress", description="Pipeline stages done (%)"
        )

    def run(self, name: str, stage_flow: Callable[..., ArtifactRef], **params: Any) -> ArtifactRef:
        """Run one stage's flow, record its run and advance the progress artifact."""
        started = time.perf_counter()
        ref = stage_flow(**params)
        manifest = self.store.read_manifest(ref)
        computed = manifest is not None and manifest.created_at >= self.started_at.isoformat()
        self.stages[name] = StageRun(
            artifact=ref, computed=computed, seconds=round(time.perf_counter() - started, 1)
        )
        update_progress_artifact(
            self.artifact_id, progress=100.0 * len(self.stages) / len(self.names)
        )
        return ref

    def result(self) -> PipelineRun:
        return PipelineRun(stages=self.stages)


@task(name="publish-pipeline-summary")
def publish_pipeline_summary(run: PipelineRun, store_root: str) -> str:
    """Publish (and return) the summary; not cached: each run gets its own."""
    markdown = pipeline_markdown(run, ArtifactStore(store_root), PREFECT_UI_URL.value() or "")
    create_markdown_artifact(
        key="pipeline-summary", markdown=markdown, description="Outputs of every pipeline stage"
    )
    return markdown
