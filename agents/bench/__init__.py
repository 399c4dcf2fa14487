"""Benchmarks and the load test: ``emrshare bench ...`` and ``emrshare loadtest``."""
