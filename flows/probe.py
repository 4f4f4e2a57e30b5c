"""The probe flow: corpus -> dataset -> every layer x pooling embedded in one encoder pass (the
embed stage, on Dask) -> linear probes and a recommendation. `penultimate probe --config FILE`.
"""

from __future__ import annotations

from prefect import flow

from flows.embed import embed
from flows.ingest import ingest
from penultimate.artifacts import ArtifactRef, ArtifactStore
from penultimate.config import ProbeConfig
from tasks.probe import probe_embeddings


@flow(name="probe", log_prints=True)
def probe(config: ProbeConfig, store_root: str | None = None) -> ArtifactRef:
    """Which embedding should I take? Every stage cached: a rerun with new scoring settings only
    refits the probes."""
    root = str(ArtifactStore(store_root).root)
    dataset = ingest(config=config.ingest, store_root=root)
    embeddings = embed(config=config.embed_config(), dataset=dataset, store_root=root)
    return probe_embeddings(config=config, embeddings=embeddings, store_root=root)
