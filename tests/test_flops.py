"""Analytical FLOPs and parameter counts against XLA's own cost analysis and the built model; peak lookup; MFU."""

import math
import types

import jax
import jax.numpy as jnp
import optax
import pytest

from rankjax import models
from rankjax.models import flops
from rankjax.models.config import head_dim


def _config(**kw):
  """A tiny config where matmuls dominate XLA's FLOP count (softmax, norms and RoPE are a few %)."""
  c = models.default_config()
  c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.mlp_dim = 2048, 256, 2, 4, 2, 1024
  c.remat = "none" if isinstance(c.remat, str) else False  # XLA must not count recomputation
  for k, v in kw.items():
    c[k] = v
  return c


def _xla_flops(fn, *args) -> float:
  """FLOPs of the compiled `fn`, from XLA's cost analysis (a dict, or a list of dicts in some JAX versions)."""
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis["flops"])


@pytest.fixture(scope="module")
def tiny():
  config = _config()
  model = models.build_model(config)
  params = jax.eval_shape(lambda: models.init_params(model, jax.random.PRNGKey(0)))  # shapes suffice for XLA's count
  return config, model, params


def test_forward_flops_match_xla(tiny):
  config, model, params = tiny
  b, t = 2, 128
  ids = jax.ShapeDtypeStruct((b, t), jnp.int32)
  xla = _xla_flops(lambda p, x: model.apply({"params": p}, x), params, ids)
  # XLA computes all T x T scores (the mask only hides them), so compare with the full-T count.
  full = flops.flops_per_token(config, t, training=False, causal_average=False) * b * t
  assert abs(xla - full) / full < 0.05, (xla, full)
  # The causal convention differs by exactly half the score/value matmuls.
  causal = flops.flops_per_token(config, t, training=False) * b * t
  h, hd = config.num_heads, head_dim(config)
  assert full - causal == pytest.approx(config.num_layers * 2 * 2 * h * hd * (t / 2) * b * t)


def test_training_is_three_forwards_and_matches_xla(tiny):
  config, model, params = tiny
  b, t = 2, 128
  ids = jax.ShapeDtypeStruct((b, t), jnp.int32)

  def loss(p, x):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), x).mean()

  xla = _xla_flops(jax.value_and_grad(loss), params, ids)
  train = flops.flops_per_token(config, t, training=True, causal_average=False)
  assert train == 3 * flops.flops_per_token(config, t, training=False, causal_average=False)
  assert abs(xla - train * b * t) / (train * b * t) < 0.05, (xla, train * b * t)


def test_groups_sum_and_hand_count():
  c = _config(num_layers=1)
  groups = flops.forward_flops_by_group(c, 64, causal_average=False)
  d, hd = 256, 64
  assert groups == {"attention_projections": 2 * d * (4 * hd + 2 * 2 * hd) + 2 * 4 * hd * d,
                    "attention_scores": 4 * 4 * hd * 64, "mlp": 6 * d * 1024, "lm_head": 2 * d * 2048}
  assert flops.flops_per_token(c, 64, training=False, causal_average=False) == sum(groups.values())


_NEWER_FIELDS = {k: True for k in ("qk_norm", "out_bias") if k in models.default_config()}  # when the config has them


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False, "qkv_bias": True, **_NEWER_FIELDS},
                                {"head_dim": 32, "num_kv_heads": 4}])
def test_param_groups_match_model(kw):
  c = _config(**{"vocab_size": 97, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "mlp_dim": 64,
                 **kw})
  shapes = jax.eval_shape(lambda: models.init_params(models.build_model(c), jax.random.PRNGKey(0)))
  assert sum(flops.num_params_by_group(c).values()) == sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def test_peak_lookup_and_mfu():
  assert flops.peak_flops_per_device() is None  # the tests run on CPU
  fake = lambda kind: types.SimpleNamespace(platform="gpu" if "NVIDIA" in kind else "tpu", device_kind=kind)
  assert flops.peak_flops_per_device(fake("NVIDIA H100 80GB HBM3")) == 989e12
  assert flops.peak_flops_per_device(fake("NVIDIA H100 PCIe")) == 756e12
  assert flops.peak_flops_per_device(fake("NVIDIA H200")) == 989e12
  assert flops.peak_flops_per_device(fake("NVIDIA A100-SXM4-80GB")) == 312e12
  assert flops.peak_flops_per_device(fake("TPU v4")) == 275e12
  assert flops.peak_flops_per_device(fake("TPU v5 lite")) == 197e12
  assert flops.peak_flops_per_device(fake("TPU v5")) == 459e12
  assert flops.peak_flops_per_device(fake("TPU v6 lite")) == 918e12
  assert flops.peak_flops_per_device(fake("NVIDIA GeForce GTX 1080")) is None
  assert flops.peak_flops_per_device(fake("NVIDIA H100 80GB HBM3"), dtype="float32") is None
  assert flops.mfu(1000.0, 6e9, 1e13) == pytest.approx(0.6)
  with pytest.raises(ValueError):
    flops.mfu(1000.0, 6e9, 0.0)
