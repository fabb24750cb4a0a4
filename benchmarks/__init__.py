"""Benchmarks: ``python -m benchmarks.bench --help`` (or ``python benchmarks/bench.py``)."""
