"""The unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on Code").

With n samples per problem of which c are correct, pass@k = 1 - C(n-c, k) / C(n, k): the probability that
a uniformly random k-subset of the n samples holds at least one correct sample.
"""

from __future__ import annotations

from collections.abc import Sequence


def _check(n: int, c: int, k: int) -> None:
  """Raises ValueError unless n, c, k are ints with 0 <= c <= n and 1 <= k <= n."""
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, c, k)):
    raise ValueError(f"pass_at_k needs ints, got n={n!r}, c={c!r}, k={k!r}")
  if not 0 <= c <= n:
    raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
  if not 1 <= k <= n:
    raise ValueError(f"pass_at_k needs 1 <= k <= n, got n={n}, k={k}")


def pass_at_k(n: int, c: int, k: int) -> float:
  """Returns the unbiased estimate of pass@k from n samples of which c are correct.

  Computed in the stable product form 1 - prod_{i=n-c+1}^{n} (1 - k/i), which equals 1 - C(n-c, k)/C(n, k);
  exactly 1.0 when n - c < k (every k-subset holds a correct sample). Note c >= k does not imply 1.0.
  Raises ValueError unless n, c, k are ints with 0 <= c <= n and 1 <= k <= n.
  """
  _check(n, c, k)
  if n - c < k:
    return 1.0
  product = 1.0
  for i in range(n - c + 1, n + 1):
    product *= 1.0 - k / i
  return 1.0 - product


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
  """Returns the mean over problems of pass_at_k(n_i, c_i, k) for `counts` = [(n_i, c_i), ...].

  Raises ValueError for an empty `counts` or invalid values (see `pass_at_k`).
  """
  if len(counts) == 0:
    raise ValueError("mean_pass_at_k needs at least one (n, c) pair")
  return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
