"""Benchmark: the scoring worker vs clip-retrieval (`python -m bench.clip`)."""
