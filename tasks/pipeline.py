"""The pipeline's own Prefect pieces: a progress artifact on the pipeline run, advanced as each
stage finishes (timing it), and the summary markdown artifact linking every stage's outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import get_client, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.sorting import ArtifactSort
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.pipeline_summary import STAGE_REPORTS, PipelineRun, StageRun, pipeline_markdown
from tasks.subflow import run_subflow, subflow_runs


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
        ref = run_subflow(stage_flow, **params)
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


def stage_report_links(ui_url: str) -> dict[str, str]:
    """Report key -> UI link for each stage report: this pipeline run's own version (made in one
    of its subflows, a cached stage's republished one too), else the key's page of versions."""
    keys = list(STAGE_REPORTS.values())
    try:
        newest = _newest_reports_of_this_run(keys)
    except Exception as error:  # a link is not worth failing a finished pipeline over
        get_run_logger().warning("summary links to every run's reports: %s", error)
        newest = {}
    return {
        key: f"{ui_url}/artifacts/artifact/{newest[key]}"
        if key in newest
        else f"{ui_url}/artifacts/key/{key}"
        for key in keys
    }


def _newest_reports_of_this_run(keys: list[str]) -> dict[str, UUID]:
    if not flow_run.id:
        return {}
    this_run = UUID(flow_run.id)
    with get_client(sync_client=True) as client:
        runs = [this_run] + [run.id for level in subflow_runs(client, this_run) for run in level]
        reports = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=keys),
                flow_run_id=ArtifactFilterFlowRunId(any_=runs),
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=200,
        )
    return {str(report.key): report.id for report in reversed(reports)}


@task(name="publish-pipeline-summary")
def publish_pipeline_summary(run: PipelineRun, store_root: str) -> str:
    """Publish (and return) the summary; not cached: each run gets its own."""
    ui_url = PREFECT_UI_URL.value()
    links = stage_report_links(ui_url) if ui_url else {}
    markdown = pipeline_markdown(run, ArtifactStore(store_root), links)
    create_markdown_artifact(
        key="pipeline-summary", markdown=markdown, description="Outputs of every pipeline stage"
    )
    return markdown
