"""Reward functions by name: each maps a batch of completions (texts) and their gold answers to one float each.

A reward function is `fn(completions: list[str], golds: list[str], pool: GradingPool) -> list[float]`; register
one with `register(name, fn)` and name it in `config.rl.rewards` ("correct,format:0.1": weights after a colon,
default 1). A function that raises, or returns the wrong number of values or a non-finite one, stops the run
with a `RewardError` naming it (a silent 0 would look like a model that never learns).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from rankjax.data.answers import extract_answer
from rankjax.eval.grading import GradingPool
from rankjax.models.errors import ConfigError

RewardFn = Callable[[list[str], list[str], GradingPool], list[float]]


class RewardError(RuntimeError):
  """A reward function failed; the message names it."""


def correct(completions: list[str], golds: list[str], pool: GradingPool) -> list[float]:
  """1.0 where the completion's final answer (`extract_answer`) equals the gold one under math-verify, else 0.0.
  A grading that times out or crashes its worker scores 0.0 (counted in `pool.lost`)."""
  return [float(v) for v in pool.grade_many(list(zip(completions, golds)))]


def format_reward(completions: list[str], golds: list[str], pool: GradingPool) -> list[float]:
  """1.0 where the completion states a final answer the grader can read (a box, `####`, "the answer is"), else 0."""
  del golds, pool
  return [1.0 if extract_answer(c) else 0.0 for c in completions]


REWARDS: dict[str, RewardFn] = {"correct": correct, "format": format_reward}


def register(name: str, fn: RewardFn) -> None:
  """Makes `fn` available as `config.rl.rewards` entry `name`."""
  REWARDS[name] = fn


def parse(spec: str) -> list[tuple[str, float]]:
  """[(name, weight)] of a `config.rl.rewards` string; ConfigError for an unknown name or a bad weight."""
  out = []
  for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
    name, _, weight = part.partition(":")
    if name not in REWARDS:
      raise ConfigError(f"config.rl.rewards={spec!r}: unknown reward function {name!r} (known: {sorted(REWARDS)}; "
                        "rankjax.rl.rewards.register adds one)")
    try:
      w = float(weight) if weight else 1.0
    except ValueError:
      raise ConfigError(f"config.rl.rewards={spec!r}: weight {weight!r} of {name!r} is not a number") from None
    if not math.isfinite(w):
      raise ConfigError(f"config.rl.rewards={spec!r}: weight of {name!r} must be finite")
    out.append((name, w))
  if not out:
    raise ConfigError(f"config.rl.rewards={spec!r} names no reward function")
  return out


def compute_rewards(spec: str, completions: list[str], golds: list[str],
                    pool: GradingPool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(total reward [N] float32, {name: that function's values [N]}) of the completions."""
  total = np.zeros(len(completions), np.float32)
  parts = {}
  for name, weight in parse(spec):
    try:
      values = REWARDS[name](list(completions), list(golds), pool)
    except Exception as e:  # noqa: BLE001 (any failure of a user's function is named, then re-raised)
      raise RewardError(f"reward function {name!r} raised {type(e).__name__}: {e} (on {len(completions)} "
                        "completions)") from e
    values = np.asarray(values, np.float32).reshape(-1)
    if values.shape[0] != len(completions) or not np.all(np.isfinite(values)):
      raise RewardError(f"reward function {name!r} returned {values.shape[0]} values for {len(completions)} "
                        f"completions, or a non-finite one: {values[:8].tolist()}")
    parts[name] = values
    total += weight * values
  return total, parts
