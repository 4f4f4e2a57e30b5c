"""Benchmarks run by `make bench`; each writes its own section of benchmarks/RESULTS.md.

Never run by the test suite: performance goals are measured here, not asserted in tests.
"""
