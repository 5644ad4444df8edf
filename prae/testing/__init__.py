"""Helpers for tests and benchmarks that start real Ray processes (and stop only those)."""
