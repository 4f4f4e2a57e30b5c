"""The cluster stage's plain summaries: cluster names and the Prefect `cluster-summary` table rows,
read from metrics.json. No scientific imports, so a cached run shows them without loading any.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NOISE = -1  # hdbscan's label for points in no cluster


def cluster_name(cluster: int) -> str:
    return "noise" if cluster == NOISE else f"cluster {cluster}"


def summary_table(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the Prefect cluster-summary table, from a cluster artifact's metrics.json."""
    mixes, terms = metrics.get("label_mix", {}), metrics.get("terms", {})
    return [
        {
            "cluster": cluster_name(int(key)),
            "size": size,
            "top terms": ", ".join(terms.get(key, [])[:5]),
            "label mix": ", ".join(f"{k} {v}" for k, v in mixes.get(key, {}).items()),
        }
        for key, size in metrics["sizes"].items()
    ]
