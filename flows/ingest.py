"""The ingest flow: raw corpus -> dataset artifact (sharded Parquet with splits).

Run with `penultimate ingest --config FILE` or as the `ingest` deployment.
"""

from __future__ import annotations

from prefect import flow

from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import IngestConfig
from tasks.ingest import ingest_dataset


@flow(name="ingest", log_prints=True)
def ingest(config: IngestConfig, store_root: str | None = None) -> ArtifactRef:
    """Validate the corpus and publish it as a dataset artifact (cached on config)."""
    return ingest_dataset(config=config, store_root=str(ArtifactStore(store_root).root))
