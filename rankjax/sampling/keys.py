"""Per-sample PRNG keys: one raw key per (benchmark name, problem index, sample index), independent of any batching."""

from __future__ import annotations

import zlib

import jax
import numpy as np


def benchmark_id(name: str) -> int:
  """A stable 31-bit id of a benchmark name (part of every sample's key)."""
  return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


@jax.jit
def _keys(seed, bench, problem, sample):
  def one(b, i, j):
    key = jax.random.PRNGKey(seed)
    return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, b), i), j)
  return jax.vmap(one)(bench, problem, sample)


def sample_keys(seed: int, items) -> np.ndarray:
  """Returns raw uint32 keys [len(items), 2]: fold_in(fold_in(fold_in(PRNGKey(seed), bench id), problem), sample)
  for each (benchmark name, problem index, sample index) of `items`."""
  if not items:
    return np.zeros((0, 2), np.uint32)
  bench = np.asarray([benchmark_id(b) for b, _, _ in items], np.uint32)
  problem = np.asarray([i for _, i, _ in items], np.uint32)
  sample = np.asarray([j for _, _, j in items], np.uint32)
  return np.asarray(jax.device_get(_keys(seed, bench, problem, sample)))
