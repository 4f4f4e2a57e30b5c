"""Prefect tasks: units of work with caching, retries and Prefect artifacts, thin over the library.

Every task returns an `ArtifactRef` and is cached on its artifact's content key.
"""
