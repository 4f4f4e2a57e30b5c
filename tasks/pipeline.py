"""The pipeline's summary task: one markdown Prefect artifact linking every stage's outputs."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.settings import PREFECT_UI_URL

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.pipeline_summary import pipeline_markdown


@task(name="publish-pipeline-summary")
def publish_pipeline_summary(refs: dict[str, ArtifactRef], store_root: str) -> str:
    """Publish (and return) the summary; not cached: each run gets its own."""
    markdown = pipeline_markdown(refs, ArtifactStore(store_root), PREFECT_UI_URL.value() or "")
    create_markdown_artifact(
        key="pipeline-summary", markdown=markdown, description="Outputs of every pipeline stage"
    )
    return markdown
