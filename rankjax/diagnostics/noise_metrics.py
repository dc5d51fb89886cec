"""How many noise tokens a score puts in its top set: token precision, token recall, sequence hit rate.

The top set is the k = round(top_fraction * N) highest-scored tokens of the WHOLE pool of N supervised tokens
(half up, at least 1), not a top set per sequence. Ties are broken uniformly at random with a seeded
generator (one random key per token, the same keys for every family), so a constant score (sft's w_t = 1)
gets a uniformly random top set, whose expected precision is the base rate (the noise share of the pool).
"""

from __future__ import annotations

import numpy as np


def top_count(num_tokens: int, fraction: float) -> int:
  """Returns k = round(fraction * num_tokens), half up, at least 1."""
  return max(1, int(np.floor(fraction * num_tokens + 0.5)))


def tie_keys(num_tokens: int, seed: int) -> np.ndarray:
  """Returns the random tie-breaking keys of the pool's tokens (float64 in [0, 1), seeded)."""
  return np.random.default_rng(seed).random(num_tokens)


def top_set(scores: np.ndarray, fraction: float, keys: np.ndarray) -> np.ndarray:
  """Returns a bool mask of the top_count(N, fraction) highest `scores`; equal scores ordered by `keys`."""
  scores = np.asarray(scores, np.float64)
  order = np.lexsort((keys, -scores))  # by score descending, then by key
  top = np.zeros(scores.shape, bool)
  top[order[:top_count(scores.size, fraction)]] = True
  return top


def detection_metrics(scores: np.ndarray, is_noise: np.ndarray, example: np.ndarray, fraction: float,
                      keys: np.ndarray) -> dict:
  """Returns the noise found by the top set of `scores` (one per pool token; `is_noise` and `example` (its
  sequence index) alike): precision (share of the top set that is noise), recall (share of the noise inside
  the top set), hit_rate (share of the sequences holding noise that have a noise token in the top set), all
  in [0, 1]; top_count; mean and median score on noise and on clean tokens (the score's own units)."""
  is_noise = np.asarray(is_noise, bool)
  if not is_noise.any() or is_noise.all():
    raise ValueError("noise metrics: the pool needs both noise and clean tokens")
  top = top_set(scores, fraction, keys)
  hits = top & is_noise
  noisy_sequences = np.unique(example[is_noise])
  hit_sequences = np.unique(example[hits])
  scores = np.asarray(scores, np.float64)
  return {"precision": float(hits.sum() / top.sum()), "recall": float(hits.sum() / is_noise.sum()),
          "hit_rate": float(hit_sequences.size / noisy_sequences.size), "top_count": int(top.sum()),
          "noise_in_top": int(hits.sum()), "noisy_sequences": int(noisy_sequences.size),
          "noisy_sequences_hit": int(hit_sequences.size),
          "mean_noise": float(scores[is_noise].mean()), "mean_clean": float(scores[~is_noise].mean()),
          "median_noise": float(np.median(scores[is_noise])), "median_clean": float(np.median(scores[~is_noise]))}
