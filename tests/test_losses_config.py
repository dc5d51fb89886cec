"""Loss config validation, input checks, and jit / vmap compatibility of rankjax.losses."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rankjax import losses
from tests.helpers import loss_config as make_config
from tests import numpy_reference as ref

V = 11

CONFIGS = {
    "sft": {"name": "sft"},
    "dft": {"name": "dft"},
    "talr": {"name": "talr"},
    "eaft": {"name": "eaft", "eaft_top_k": 4, "eaft_alpha": 1.5},
    "ranktuner_exact_prob": {"name": "ranktuner", "form": "exact", "base": "prob"},
    "ranktuner_exact_uniform": {"name": "ranktuner", "form": "exact", "base": "uniform"},
    "ranktuner_bound_prob": {"name": "ranktuner", "form": "bound", "base": "prob"},
    "ranktuner_bound_uniform": {"name": "ranktuner", "form": "bound", "base": "uniform",
                                "diagnostics": False},
}




def _inputs(shape=(3, 4, 5), seed=0):
  """logits [*shape, V], targets, partial mask (every leading slice has a supervised token)."""
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(2.0 * rng.standard_normal(shape + (V,)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, V, size=shape), jnp.int32)
  mask = (rng.random(shape) < 0.7).astype(np.float32)
  mask[..., 0] = 1.0
  return logits, targets, jnp.asarray(mask)


# --------------------------------------------------------------------------- config


def test_default_config_is_valid_and_matches_spec_defaults():
  c = losses.default_config()
  losses.validate_config(c)
  assert (c.name, c.form, c.base) == ("ranktuner", "exact", "prob")  # spec sections 3-4
  assert c.eaft_top_k == 20 and c.eaft_alpha == 1.0  # spec section 5
  assert c.talr_normalize is True


@pytest.mark.parametrize("config_id", list(CONFIGS))
def test_every_test_config_is_valid(config_id):
  losses.validate_config(make_config(**CONFIGS[config_id]))


BAD = [
    ("name", "ranktunr"),
    ("name", "SFT"),
    ("form", "approx"),
    ("base", "ones"),
    ("expected_rank", "streaming"),
    ("eaft_top_k", 1),
    ("eaft_top_k", 0),
    ("eaft_alpha", 0.0),
    ("talr_min_tau", 0.0),
    ("talr_min_tau", -1.0),
]


@pytest.mark.parametrize("field,value", BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_invalid_field_raises_value_error_naming_it(field, value):
  config = make_config(**{field: value})
  with pytest.raises(ValueError, match=re.escape(field)):
    losses.validate_config(config)
  logits, targets, mask = _inputs()
  # every entry point validates, whatever the scheme (an invalid `form` is an error even for sft)
  with pytest.raises(ValueError, match=re.escape(field)):
    losses.weighted_loss(logits, targets, mask, config)
  with pytest.raises(ValueError, match=re.escape(field)):
    losses.token_weights(logits, targets, mask, config)


@pytest.mark.parametrize("field", list(losses.default_config().keys()))
def test_missing_field_raises_value_error_naming_it(field):
  d = losses.default_config().to_dict()
  del d[field]
  config = ml_collections.ConfigDict(d)
  with pytest.raises(ValueError, match=re.escape(field)):
    losses.validate_config(config)
  logits, targets, mask = _inputs()
  with pytest.raises(ValueError, match=re.escape(field)):
    losses.weighted_loss(logits, targets, mask, config)


# ----------------------------------------------------------------------------- input checks


def test_mask_shape_mismatch_raises():
  logits, targets, mask = _inputs()
  config = losses.default_config()
  for bad in (mask[..., :-1], mask[0], mask[..., None]):
    with pytest.raises(ValueError, match="mask"):
      losses.weighted_loss(logits, targets, bad, config)
    with pytest.raises(ValueError, match="mask"):
      losses.token_weights(logits, targets, bad, config)


def test_logits_targets_shape_mismatch_raises():
  logits, targets, mask = _inputs()
  with pytest.raises(ValueError):
    losses.token_stats(logits[..., :-1, :], targets)
  with pytest.raises(ValueError):
    losses.weighted_loss(logits[:, :-1], targets, mask, losses.default_config())


def test_float_targets_rejected():
  logits, targets, _ = _inputs()
  with pytest.raises(TypeError):
    losses.token_stats(logits, targets.astype(jnp.float32))


@pytest.mark.parametrize("bad_id,index", [(V, (1, 2, 3)), (-1, (0, 0, 0)), (10**6, (2, 3, 4))])
def test_out_of_range_target_raises_naming_index(bad_id, index):
  logits, targets, mask = _inputs()
  targets = targets.at[index].set(bad_id)
  mask = mask.at[index].set(1.0)
  idx = re.escape(str(index))
  with pytest.raises(ValueError, match=idx):
    losses.weighted_loss(logits, targets, mask, losses.default_config())
  with pytest.raises(ValueError, match=idx):
    losses.token_weights(logits, targets, mask, make_config(name="sft"))
  with pytest.raises(ValueError, match=idx):
    losses.check_targets(np.asarray(targets), V)
  with pytest.raises(ValueError, match=idx):  # numpy targets too
    losses.weighted_loss(logits, np.asarray(targets), mask, losses.default_config())


def test_check_targets_accepts_valid_and_tracers():
  _, targets, _ = _inputs()
  losses.check_targets(targets, V)  # no error
  losses.check_targets(np.array([0, V - 1]), V)
  jax.jit(lambda t: losses.check_targets(t, 3) or t)(targets)  # tracers pass silently


# ---------------------------------------------------------------------------- jit / vmap


def _all_schemes(logits, targets, mask):
  """Loss, gradient, aux and weights of every config, plus the token statistics."""
  out = {}
  for key, overrides in CONFIGS.items():
    config = make_config(**overrides)  # closed over: configs are Python constants, not pytrees
    f = lambda z, config=config: losses.weighted_loss(z, targets, mask, config)  # noqa: E731
    (loss, aux), grad = jax.value_and_grad(f, has_aux=True)(logits)
    out[key] = {"loss": loss, "grad": grad, "aux": aux,
                "weights": losses.token_weights(logits, targets, mask, config)}
  stats = losses.token_stats(logits, targets)
  out["stats"] = {k: stats[k] for k in stats.keys()}
  return out


# One test, two compilations (jit of the unbatched function, jit of its vmap): the eager
# path is compared with the float64 reference in test_losses_reference.py, and the jitted
# one is compared with the same reference here.
def test_jit_and_vmap_for_every_scheme():
  """jit(weighted_loss, its grad, token_weights) with the config closed over matches the
  float64 reference; vmap over a leading axis equals the unbatched call on every slice
  (so TALR's median, the token count and the loss are per slice)."""
  logits, targets, mask = _inputs()
  unbatched = jax.jit(_all_schemes)
  slices = [jax.device_get(unbatched(logits[i], targets[i], mask[i])) for i in range(logits.shape[0])]
  vmapped = jax.device_get(jax.jit(jax.vmap(_all_schemes))(logits, targets, mask))
  failures = []
  for key in list(CONFIGS) + ["stats"]:
    try:
      for i, single in enumerate(slices):
        jax.tree.map(lambda b, s, i=i: np.testing.assert_allclose(
            b[i], s, rtol=1e-6, atol=1e-7, err_msg=f"vmap slice {i}"), vmapped[key], single[key])
        if key == "stats":
          continue
        config = make_config(**CONFIGS[key])
        z, t, m = (np.asarray(x) for x in (logits[i], targets[i], mask[i]))
        z = z.astype(np.float64)
        # logits ~ N(0, 4), V = 11: float32 vs float64 differ by ~1e-6 relative
        np.testing.assert_allclose(single[key]["loss"], ref.loss(z, t, m, config), rtol=1e-5,
                                   err_msg="jit loss")
        np.testing.assert_allclose(single[key]["weights"], ref.masked_weights(z, t, m, config),
                                   rtol=1e-5, atol=1e-7, err_msg="jit weights")
        np.testing.assert_allclose(single[key]["grad"], ref.loss_grad(z, t, m, config), rtol=1e-4,
                                   atol=1e-7, err_msg="jit grad")
    except AssertionError as e:
      failures.append(f"[{key}] {e}")
  assert not failures, "\n".join(failures)


def test_any_id_allowed_at_unsupervised_positions():
  """Targets off the mask may hold anything (e.g. the -100 padding convention): no error, no NaN,
  and the same loss and gradient as with a valid id there."""
  logits, targets, mask = _inputs()
  mask = mask.at[0, 0, 0].set(0.0)
  padded = targets.at[0, 0, 0].set(-100)
  for name in ("sft", "ranktuner", "talr", "eaft"):
    config = make_config(name=name)
    (l1, _), g1 = jax.value_and_grad(lambda z: losses.weighted_loss(z, targets, mask, config), has_aux=True)(logits)
    (l2, _), g2 = jax.value_and_grad(lambda z: losses.weighted_loss(z, padded, mask, config), has_aux=True)(logits)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-9)
