"""Evaluation: answer extraction and math-verify grading, Pass@k, the sampled math-benchmark harness
(`rankjax.eval.harness`, run by `python -m rankjax.evaluate` and during training), greedy exact-match accuracy
and per-token tables. Importing this package does not import JAX (grading workers import it)."""

from rankjax.eval.answers import extract_answer
from rankjax.eval.grading import GradingPool, grade, grade_many
from rankjax.eval.pass_at_k import pass_at_k

__all__ = ["extract_answer", "grade", "grade_many", "GradingPool", "pass_at_k"]
