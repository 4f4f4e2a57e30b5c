"""Prefect flows: each composes tasks and nothing else; a pydantic config in, an ArtifactRef out.

`penultimate.cli` runs them ad hoc; prefect.yaml deploys them.
"""
