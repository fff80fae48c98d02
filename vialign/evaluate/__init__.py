"""Evaluation: benchmarks, parsers, metrics."""
