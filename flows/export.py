"""The export flow: classifier artifact -> verified SavedModel artifact (strings in; predictions,
pre-dropout embeddings, encoder layer x pooling embeddings and MC-dropout out).
"""

from __future__ import annotations

from prefect import flow

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import ExportConfig
from tasks.export import export_classifier

DEFAULT_EXPORT = ExportConfig()


@flow(name="export", log_prints=True)
def export(
    classifier: ArtifactRef,
    dataset: ArtifactRef,
    config: ExportConfig = DEFAULT_EXPORT,
    store_root: str | None = None,
) -> ArtifactRef:
    """Export and verify; `dataset` supplies the held-out texts of the check."""
    root = str(ArtifactStore(store_root).root)
    return export_classifier(config=config, classifier=classifier, dataset=dataset, store_root=root)
