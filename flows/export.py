"""The export flow: classifier artifact -> verified SavedModel artifact (strings in; predictions,
pre-dropout embeddings, encoder layer x pooling embeddings and MC-dropout out).
"""

from __future__ import annotations

from prefect import flow

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import ExportConfig
from penultimate.stages import CLASSIFIER_STAGE, DATASET_STAGE
from tasks.export import export_classifier

DEFAULT_EXPORT = ExportConfig()


@flow(name="export", log_prints=True)
def export(
    classifier: ArtifactRef | None = None,
    dataset: ArtifactRef | None = None,
    config: ExportConfig = DEFAULT_EXPORT,
    store_root: str | None = None,
) -> ArtifactRef:
    """Export a classifier and verify the SavedModel against it on held-out texts.

    Args:
        classifier: The classifier artifact folder (default: the store's newest classifier).
        dataset: Supplies the check's held-out texts (default: the classifier's own dataset).
        config: What the check compares and on how many texts.
        store_root: The artifact store (default: $PENULTIMATE_HOME, else ./artifacts).
    """
    store = ArtifactStore(store_root)
    classifier = store.input_artifact(classifier, CLASSIFIER_STAGE, made_by="train")
    if dataset is None:
        dataset = store.input_of(classifier, DATASET_STAGE)
    dataset = store.input_artifact(dataset, DATASET_STAGE, made_by="ingest")
    return export_classifier(
        config=config, classifier=classifier, dataset=dataset, store_root=str(store.root)
    )
