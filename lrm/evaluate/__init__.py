"""Evaluation harness: one protocol for every method (docs/evaluation.md)."""
