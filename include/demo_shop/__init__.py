"""The demo shop: a seeded, deterministic multi-market store for the demo, tests and benchmarks (not production code)."""
