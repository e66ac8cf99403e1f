"""Benchmarks: plain scripts that print numbers (`python -m bench.cycle`, `python -m bench.topology`)."""
