"""Benchmarks: plain scripts that print numbers (`python -m bench.cycle`, `bench.topology`, `bench.mtu`,
`bench.diagnose_scale`)."""
