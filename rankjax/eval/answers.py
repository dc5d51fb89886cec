"""Extraction of the final answer from a model's completion: `rankjax.data.answers.extract_answer`, the one
extractor that also cuts the gold answers of the data sources (kept importable from here)."""

from rankjax.data.answers import extract_answer

__all__ = ["extract_answer"]
