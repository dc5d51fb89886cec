"""Checks of the inputs every loss shares (dense and fused): the config, target ids, the mask, the
vocabulary size and a scheme's extra per-token inputs.

- mask: 0 or 1 per position, the set of supervised positions (not a per-token weight). Concrete
  masks with any other value raise ValueError; under jit (no check) a position is supervised
  iff mask > 0. Positions off the mask do not touch the loss or the gradient, even with NaN
  or inf logits (hidden states) or any target id there (e.g. -100).
- targets at supervised positions: ids in [0, V). Eager calls raise ValueError naming the
  first bad one; under jit an id outside makes the loss NaN (never wrapped around), so the
  train step, which refuses non-finite steps, refuses it.
- extra per-token inputs (a scheme's `inputs`, e.g. reference log-probs): [..., T] like the targets; values
  off the mask are replaced by 0 (they may hold anything, NaN included).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rankjax.losses import registry
from rankjax.losses.config import validate_config


def check_targets(targets, vocab_size: int, mask=None, where: str = "targets") -> None:
  """Raises ValueError naming the first out-of-range target id at a supervised position (all
  positions without `mask`). Checks concrete arrays only; under jit (tracers) it does nothing."""
  if isinstance(targets, jax.core.Tracer) or isinstance(mask, jax.core.Tracer):
    return
  t = np.asarray(targets)
  supervised = np.ones(t.shape, bool) if mask is None else np.asarray(mask) > 0
  bad = np.argwhere(((t < 0) | (t >= vocab_size)) & supervised)
  if bad.size:
    idx = tuple(int(i) for i in bad[0])
    raise ValueError(f"{where}: token id {int(t[idx])} at index {idx} is outside [0, {vocab_size})")


def check_mask(mask, where: str = "loss mask") -> None:
  """Raises ValueError naming the first entry of `mask` that is neither 0 nor 1. Checks concrete
  arrays only; under jit (tracers) it does nothing and a position is supervised iff mask > 0."""
  if isinstance(mask, jax.core.Tracer):
    return
  m = np.asarray(mask)
  bad = np.argwhere(~((m == 0) | (m == 1)))
  if bad.size:
    idx = tuple(int(i) for i in bad[0])
    raise ValueError(f"{where}: value {m[idx]!r} at index {idx} of shape {m.shape} is not 0 or 1 "
                     "(the mask selects supervised tokens; it is not a per-token weight)")


def check_vocab_size(config, vocab_size: int, what: str) -> None:
  """Raises ValueError if scheme `config.name` is undefined at this vocabulary size (`what` names the shape)."""
  scheme = registry.get(config.name)
  if vocab_size < scheme.min_vocab:
    raise ValueError(f"loss config: {scheme.name} needs V >= {scheme.min_vocab} ({scheme.min_vocab_reason}); "
                     f"got V = {vocab_size} from {what}")


def checked_targets(targets, mask, vocab_size: int, config):
  """Validates config, shapes, target ids and mask values; returns (targets with unsupervised
  positions (any id, e.g. -100) set to 0, mask), both jax arrays."""
  validate_config(config)
  targets, mask = jnp.asarray(targets), jnp.asarray(mask)
  if mask.shape != targets.shape:
    raise ValueError(f"loss mask shape {mask.shape} differs from targets shape {targets.shape}")
  check_targets(targets, vocab_size, mask)
  check_mask(mask)
  return jnp.where(mask > 0, targets, 0), mask


def checked_inputs(inputs, mask, config) -> dict:
  """The extra per-token inputs scheme `config.name` declares, stop-gradient [..., T] with 0 off the mask; ValueError
  naming the scheme and the input when one is missing, unexpected or not shaped like the mask."""
  scheme = registry.get(config.name)
  inputs = dict(inputs or {})
  missing = [k for k in scheme.inputs if k not in inputs]
  unknown = sorted(k for k in inputs if k not in scheme.inputs)
  if missing or unknown:
    raise ValueError(f"loss: scheme {scheme.name!r} takes the per-token inputs {list(scheme.inputs)}; "
                     f"missing {missing}, unexpected {unknown}")
  out = {}
  for name in scheme.inputs:
    value = jnp.asarray(inputs[name])
    if value.shape != mask.shape:
      raise ValueError(f"loss: input {name!r} of scheme {scheme.name!r} has shape {value.shape}; the targets and "
                       f"mask have {mask.shape}")
    out[name] = jnp.where(mask > 0, jax.lax.stop_gradient(value), jnp.zeros((), value.dtype))
  return out


def check_anchor(anchor, config, what: str) -> None:
  """Raises ValueError unless an anchor head is given exactly when scheme `config.name` reads an anchor model's KL
  (`Scheme.anchor_kl`, asft); `what` names the expected form."""
  scheme = registry.get(config.name)
  if scheme.anchor_kl and anchor is None:
    raise ValueError(f"loss: scheme {scheme.name!r} adds the KL to an anchor model and needs {what} (anchor=...): "
                     "the train step passes its reference model's head")
  if anchor is not None and not scheme.anchor_kl:
    raise ValueError(f"loss: scheme {scheme.name!r} reads no anchor model; anchor=... is only for schemes with "
                     "Scheme.anchor_kl (asft)")
