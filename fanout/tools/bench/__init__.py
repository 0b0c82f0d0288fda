"""Benchmarks of fanout against the other ways of serving N completions (scripts/bench.py)."""
