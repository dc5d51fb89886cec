"""rankjax.losses (float32) against the float64 NumPy reference in numpy_reference.py.

Tolerances. The implementation reduces in float32; the reference is float64 on the very
same input values (bf16 inputs are upcast exactly), so discrete quantities (the rank R_t,
the token count) must match exactly and continuous ones up to float32 rounding:

* log p_t = z_t - logsumexp(z) has an absolute error of a few ulps of |logsumexp|, i.e.
  ~ eps32 * (max|z| + ln V): that is `lp_atol` below. It is tiny for ordinary logits but
  ~1e-3 nats at logit scale 1e3, so everything derived from log p_t inherits it.
* Weights: relative 2e-5 (float32 transcendental functions plus sums over V <= 32000)
  plus each scheme's sensitivity to an error in log p_t: TALR's p^(1/tau) multiplies it by
  2/tau (tau can be the 1e-3 floor), RankTuner's bound form and prob base by at most 3.
* Loss and gradient: an element-wise first-order error bound built from the above (see
  `_grad_bound`), not a blanket rtol, so the check stays tight where values are large.
"""

from __future__ import annotations

import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import losses
from tests.helpers import loss_config as make_config
from tests import numpy_reference as ref

EPS32 = float(np.finfo(np.float32).eps)

# ------------------------------------------------------------------------------ configs

# Every scheme and every RankTuner form/base combination runs on every input case; the
# option variants (VARIANTS) run on the CASES_FOR_VARIANTS only, to keep the file fast.
CONFIGS = {
    "sft": {"name": "sft"},
    "dft": {"name": "dft"},
    "prob_power_k2_5": {"name": "prob_power", "prob_power_k": 2.5},
    "talr": {"name": "talr"},
    "talr_unnormalized": {"name": "talr", "talr_normalize": False},
    "talr_tau_floor": {"name": "talr", "talr_min_tau": 4.0},
    "eaft": {"name": "eaft"},
    "eaft_k5_alpha2": {"name": "eaft", "eaft_top_k": 5, "eaft_alpha": 2.0},
    "ranktuner_exact_prob": {"name": "ranktuner", "form": "exact", "base": "prob"},
    "ranktuner_exact_uniform": {"name": "ranktuner", "form": "exact", "base": "uniform"},
    "ranktuner_bound_prob": {"name": "ranktuner", "form": "bound", "base": "prob"},
    "ranktuner_bound_uniform": {"name": "ranktuner", "form": "bound", "base": "uniform"},
    "ranktuner_bound_uniform_nodiag": {"name": "ranktuner", "form": "bound", "base": "uniform",
                                       "diagnostics": False},
}




# ------------------------------------------------------------------------------- inputs


def _sample_targets(rng, logits64, frac_sampled=0.5):
  """Half the targets drawn from the model's own softmax (realistic ranks), half uniform."""
  v = logits64.shape[-1]
  p = ref.softmax(logits64).reshape(-1, v)
  sampled = np.array([rng.choice(v, p=row / row.sum()) for row in p])
  uniform = rng.integers(0, v, size=sampled.shape)
  pick = rng.random(sampled.shape) < frac_sampled
  return np.where(pick, sampled, uniform).reshape(logits64.shape[:-1]).astype(np.int32)


def _partial_mask(rng, shape):
  mask = (rng.random(shape) < 0.7).astype(np.float32)
  mask.reshape(-1)[0] = 1.0  # at least one supervised token
  mask.reshape(-1)[-1] = 0.0  # at least one masked token
  return mask


# Cases share four shapes, (2, 3, 4, 2), (2, 8, 7), (2, 6, 1000) and (1, 4, 32000): on CPU
# the eager path compiles every primitive once per shape, which dominates the runtime.
SHAPE_V2, SHAPE_V7, SHAPE_V1000, SHAPE_V32000 = (2, 3, 4, 2), (2, 8, 7), (2, 6, 1000), (1, 4, 32000)


def make_case(name):
  """Returns (logits as a jnp array, targets int32, mask float32); numpy for the last two."""
  seed = sum(map(ord, name))
  rng = np.random.default_rng(seed)
  dtype = jnp.float32
  hot = None
  if name == "v2_batched":  # two leading batch dims
    logits = 2.0 * rng.standard_normal(SHAPE_V2)
  elif name == "v7":
    logits = 1.5 * rng.standard_normal(SHAPE_V7)
  elif name == "v1000":
    logits = 3.0 * rng.standard_normal(SHAPE_V1000)
  elif name == "v32000":
    logits = 3.0 * rng.standard_normal(SHAPE_V32000)
  elif name == "huge_v7":
    logits = 1e3 * rng.standard_normal(SHAPE_V7)
  elif name == "huge_v1000":
    logits = 1e3 * rng.standard_normal(SHAPE_V1000)
  elif name == "tiny_v1000":
    logits = 1e-6 * rng.standard_normal(SHAPE_V1000)
  elif name == "equal_v7":
    logits = np.zeros(SHAPE_V7)
  elif name == "equal_v1000":
    logits = np.full(SHAPE_V1000, 3.5)
  elif name.startswith("onehot_v"):  # one logit at 40, all others tied at 0
    shape = SHAPE_V7 if name == "onehot_v7" else SHAPE_V1000
    hot = rng.integers(0, shape[-1], size=shape[:-1])
    logits = np.zeros(shape)
    np.put_along_axis(logits, hot[..., None], 40.0, axis=-1)
  elif name == "masked_vocab_v7":  # vocabulary entries 4..6 masked out with -inf logits
    logits = 1.5 * rng.standard_normal(SHAPE_V7)
    logits[..., 4:] = -np.inf
  elif name == "bf16_v1000":  # many exact ties at bf16 precision
    logits = 3.0 * rng.standard_normal(SHAPE_V1000)
    dtype = jnp.bfloat16
  else:
    raise KeyError(name)
  logits = jnp.asarray(logits, dtype=dtype)
  logits64 = np.asarray(logits.astype(jnp.float32)).astype(np.float64)
  if name == "masked_vocab_v7":
    targets = rng.integers(0, 4, size=logits.shape[:-1]).astype(np.int32)
  elif hot is not None:  # half the targets on the hot token, half uniform (mostly rank V: ties)
    targets = np.where(rng.random(hot.shape) < 0.5, hot, rng.integers(0, logits.shape[-1], size=hot.shape))
    targets = targets.astype(np.int32)
  else:
    targets = _sample_targets(rng, logits64)
  mask = _partial_mask(rng, targets.shape)
  if name == "v2_batched":
    mask = np.ones_like(mask)  # one case with every token supervised
  return logits, targets, mask


VARIANTS = ("talr_unnormalized", "talr_tau_floor", "eaft_k5_alpha2", "ranktuner_bound_uniform_nodiag")
CASES_FOR_VARIANTS = ("v2_batched", "v1000", "huge_v7", "onehot_v7", "bf16_v1000")
CASES = ["v2_batched", "v7", "v1000", "v32000", "huge_v7", "huge_v1000", "tiny_v1000", "equal_v7",
         "equal_v1000", "onehot_v7", "onehot_v1000", "bf16_v1000", "masked_vocab_v7"]


def _as64(logits):
  return np.asarray(jnp.asarray(logits).astype(jnp.float32)).astype(np.float64)


def lp_atol(logits64):
  """Absolute float32 error budget of log p_t (see the module docstring)."""
  finite = np.abs(logits64[np.isfinite(logits64)])
  return 8.0 * EPS32 * (np.max(finite) + math.log(logits64.shape[-1]) + 1.0)


def weight_tol(config, logits64, targets, mask):
  """(rtol, atol) of the weights of `config` for these inputs."""
  da = lp_atol(logits64)
  if config.name == "talr":
    tau = ref.talr_tau(logits64, targets, mask, config.talr_min_tau)
    nll = -ref.target_log_prob(logits64, targets)
    # w = exp(log p / tau - log mean): an error da in log p moves the exponent by da/tau,
    # twice (the weight and the normaliser); the float32 median moves it by |log p|/tau^2.
    sens = 2.0 / tau + np.max(nll) / tau * 1e-5
  elif config.name == "eaft":
    sens = 2.0 * config.eaft_alpha
  else:
    sens = 3.0
  rtol = 2e-5 + sens * da
  w = ref.masked_weights(logits64, targets, mask, config)
  atol = max(1.0, float(np.max(np.abs(w)))) * (1e-6 + sens * da)
  return rtol, atol


def _grad_bound(config, logits64, targets, mask, extra_rel=0.0):
  """Element-wise first-order bound on |grad_impl - grad_ref|."""
  rtol, atol = weight_tol(config, logits64, targets, mask)
  w = ref.masked_weights(logits64, targets, mask, config)[..., None]
  p = ref.softmax(logits64)
  onehot = np.zeros_like(p)
  np.put_along_axis(onehot, targets.astype(np.int64)[..., None], 1.0, axis=-1)
  n = max(ref.num_tokens(mask), 1.0)
  m = (mask > 0)[..., None]
  g = ref.loss_grad(logits64, targets, mask, config)
  dw = rtol * np.abs(w) + atol
  dp = p * lp_atol(logits64) + 4 * EPS32
  bound = np.where(m, (dw * np.abs(p - onehot) + np.abs(w) * dp) / n, 0.0)
  return 2.0 * bound + extra_rel * np.abs(g) + 1e-30


def assert_within(actual, expected, bound, what):
  actual = np.asarray(actual, dtype=np.float64)
  expected = np.asarray(expected, dtype=np.float64)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  assert np.all(np.isfinite(actual) == np.isfinite(expected)), f"{what}: finiteness differs"
  err = np.abs(actual - expected)
  bad = ~(err <= bound) & np.isfinite(expected)
  if np.any(bad):
    i = tuple(np.argwhere(bad)[0])
    b = np.broadcast_to(bound, err.shape)[i]
    raise AssertionError(f"{what}: {int(bad.sum())} elements off; first at {i}: got {actual[i]!r}, "
                         f"want {expected[i]!r}, |err| {err[i]:.3g} > bound {b:.3g}")


# --------------------------------------------------------------------- the reference itself


@pytest.mark.parametrize("v", [2, 5, 9])
def test_reference_expected_rank_identities(v):
  """The sort formula agrees with 1 + sum_{i<j} min(p_i, p_j) and with sum_k P(R >= k)."""
  rng = np.random.default_rng(v)
  z = rng.standard_normal((4, v)) * 2.0
  z[0, 1:3] = z[0, 0]  # ties
  e = ref.expected_rank(z)
  np.testing.assert_allclose(e, ref.expected_rank_pairwise(z), rtol=1e-12)
  p = ref.softmax(z)
  desc = -np.sort(-p, axis=-1)
  tail = np.cumsum(desc[..., ::-1], axis=-1)[..., ::-1]  # P(R >= k) under R ~ p sorted
  np.testing.assert_allclose(e, tail.sum(-1), rtol=1e-12)


def test_reference_hand_values():
  z = np.log(np.array([[0.5, 0.25, 0.125, 0.125]]))
  t = np.array([2])
  s = ref.token_stats(z, t)
  assert s["rank"][0] == 4  # ties count against the target
  np.testing.assert_allclose(s["expected_rank"], [1 * 0.5 + 2 * 0.25 + 3 * 0.125 + 4 * 0.125])
  np.testing.assert_allclose(s["entropy_bits"], [1.75])
  np.testing.assert_allclose(s["log_prob"], [math.log(0.125)])
  f = lambda x: 1.0 / math.log2(x + 1.0)  # noqa: E731
  np.testing.assert_allclose(ref.ranktuner_scale(z, t, "exact"), [2.0 ** (f(1.875) - f(4))])
  s_h = 2.0 - 0.5  # H = 1.75 bits < 2: s = 2 - p_max (tests/test_losses_bound_form.py covers both branches)
  kk = math.log2(max(4.0, s_h) + 1.0) ** -2
  np.testing.assert_allclose(ref.ranktuner_scale(z, t, "bound"), [(0.125 * s_h) ** -kk])


# ------------------------------------------------------------------------------ statistics


def check_token_stats(case):
  """Statistics of `case` against the reference."""
  logits, targets, _ = make_case(case)
  z64 = _as64(logits)
  want = ref.token_stats(z64, targets)
  got = losses.token_stats(logits, jnp.asarray(targets))
  da = lp_atol(z64)
  assert got.log_prob.dtype == jnp.float32
  assert jnp.issubdtype(got.rank.dtype, jnp.integer)
  np.testing.assert_array_equal(np.asarray(got.rank), want["rank"])
  np.testing.assert_allclose(got.log_prob, want["log_prob"], rtol=1e-6, atol=da)
  np.testing.assert_allclose(got.entropy_bits, want["entropy_bits"], rtol=1e-5, atol=2 * da / math.log(2))
  # sum of V float32 terms k * p_(k), V up to 32000: 2e-5 relative.
  np.testing.assert_allclose(got.expected_rank, want["expected_rank"], rtol=2e-5)
  without = losses.token_stats(logits, jnp.asarray(targets), with_expected_rank=False)
  assert without.expected_rank is None
  np.testing.assert_array_equal(without.rank, got.rank)


@pytest.mark.parametrize("case", ["equal_v7", "equal_v1000"])
def test_all_equal_logits_closed_form(case):
  logits, targets, _ = make_case(case)
  v = logits.shape[-1]
  got = losses.token_stats(logits, jnp.asarray(targets))
  np.testing.assert_array_equal(got.rank, np.full(targets.shape, v))
  np.testing.assert_allclose(got.expected_rank, (v + 1) / 2, rtol=1e-5)
  np.testing.assert_allclose(got.entropy_bits, math.log2(v), rtol=1e-5)
  np.testing.assert_allclose(got.log_prob, -math.log(v), rtol=1e-5)
  f = lambda x: 1.0 / math.log2(x + 1.0)  # noqa: E731
  w = losses.token_weights(logits, jnp.asarray(targets), jnp.ones(targets.shape),
                           make_config(name="ranktuner", form="exact", base="uniform"))
  np.testing.assert_allclose(w, 2.0 ** (f((v + 1) / 2) - f(v)), rtol=1e-5)


def test_only_log_prob_carries_gradient():
  logits, targets, _ = make_case("v2_batched")
  t = jnp.asarray(targets)

  @jax.jit
  def grads(z):
    return {key: jax.grad(lambda z, key=key: jnp.sum(losses.token_stats(z, t)[key]))(z)
            for key in ("log_prob", "entropy_bits", "expected_rank")}

  g = grads(logits)
  np.testing.assert_array_equal(g["entropy_bits"], 0.0)
  np.testing.assert_array_equal(g["expected_rank"], 0.0)
  z64 = _as64(logits)
  onehot = np.zeros_like(z64)
  np.put_along_axis(onehot, targets[..., None].astype(np.int64), 1.0, axis=-1)
  np.testing.assert_allclose(g["log_prob"], onehot - ref.softmax(z64), atol=1e-6)


# ------------------------------------------------------------------- weights, loss, gradient

# Known failures, keyed by (case, config): (reason, strict). See also test_bound_prob_weight_no_nan.
XFAIL = {}  # (case, config_id) -> (reason, strict); empty: every known failure is fixed


def _run(config, logits, targets, mask):
  t, m = jnp.asarray(targets), jnp.asarray(mask)
  (loss, aux), grad = jax.value_and_grad(
      lambda z: losses.weighted_loss(z, t, m, config), has_aux=True)(logits)
  w = losses.token_weights(logits, t, m, config)
  return loss, aux, grad, w


def check_weights_loss_grad(case, config_id):
  """Weights, loss, gradient and aux of `config_id` on `case` against the reference."""
  config = make_config(**CONFIGS[config_id])
  logits, targets, mask = make_case(case)
  z64 = _as64(logits)
  loss, aux, grad, w = _run(config, logits, targets, mask)

  w_ref = ref.masked_weights(z64, targets, mask, config)
  rtol, atol = weight_tol(config, z64, targets, mask)
  assert w.dtype == jnp.float32 and w.shape == targets.shape
  assert np.all(np.asarray(w)[mask == 0] == 0.0)
  assert_within(w, w_ref, rtol * np.abs(w_ref) + atol, "weights")

  nll = -ref.target_log_prob(z64, targets)
  n = max(ref.num_tokens(mask), 1.0)
  loss_ref = ref.loss(z64, targets, mask, config)
  sup = mask > 0
  loss_bound = 2 * (rtol * abs(loss_ref) + (atol * np.sum(nll[sup]) + lp_atol(z64) * np.sum(w_ref[sup])) / n)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  assert_within(loss, loss_ref, loss_bound + 1e-7 * abs(loss_ref), "loss")

  # bf16 logits get a bf16 gradient: add bf16 rounding (2^-8 relative) on top.
  extra = 2.0 ** -7 if logits.dtype == jnp.bfloat16 else 0.0
  assert grad.dtype == logits.dtype
  assert_within(grad, ref.loss_grad(z64, targets, mask, config),
                _grad_bound(config, z64, targets, mask, extra), "grad")

  # aux scalars (global means over supervised tokens)
  assert float(aux["tokens"]) == ref.num_tokens(mask)
  np.testing.assert_allclose(aux["loss"], loss)
  np.testing.assert_allclose(aux["mean_weight"], np.sum(w_ref) / n, rtol=rtol, atol=atol)
  np.testing.assert_allclose(aux["max_weight"], np.max(w_ref), rtol=rtol, atol=atol)
  np.testing.assert_allclose(aux["mean_nll"], np.sum(nll[sup]) / n, rtol=1e-5, atol=lp_atol(z64))
  np.testing.assert_allclose(aux["mean_rank"], np.sum(ref.rank(z64, targets)[sup]) / n, rtol=1e-6)
  if config.diagnostics:
    er = ref.expected_rank(z64)
    np.testing.assert_allclose(aux["mean_expected_rank"], np.sum(er[sup]) / n, rtol=2e-5)
  if config.name == "talr":
    tau = ref.talr_tau(z64, targets, mask, config.talr_min_tau)
    np.testing.assert_allclose(aux["talr_tau"], tau, rtol=1e-5, atol=lp_atol(z64))
  for k, v in aux.items():
    assert np.all(np.isfinite(v)), k


# One test per input case runs every config: the eager per-shape compilation is then paid
# once per case rather than once per (case, config) on each xdist worker, which keeps the
# file fast. Failures of all configs are collected and reported together.
@pytest.mark.parametrize("case", CASES)
def test_case_against_reference(case):
  check_token_stats(case)
  failures = []
  for config_id in CONFIGS:
    if config_id in VARIANTS and case not in CASES_FOR_VARIANTS:
      continue
    if (case, config_id) in XFAIL:
      continue
    try:
      check_weights_loss_grad(case, config_id)
    except AssertionError as e:
      failures.append(f"[{config_id}] {e}")
  assert not failures, f"{len(failures)} config(s) failed on {case}:\n" + "\n".join(failures)


@pytest.mark.parametrize("use_jit", [
    pytest.param(False, id="eager"),  # regression: exp(log p) * S once gave 0 * inf = NaN here
    pytest.param(True, id="jit"),
])
def test_bound_prob_weight_no_nan(use_jit):
  """Minimal input: V=2, z = [0, -1000], target 1: log p = -1000, H ~ 0, s = 1.25, R = 2,
  K = log2(3)^-2 ~ 0.398, so S = e^(0.398 * 999.8) ~ e^398 overflows float32 while
  w = p S = e^(-1000 + 398) ~ e^-602 underflows to 0. Expected: w = 0, finite loss 0."""
  config = make_config(name="ranktuner", form="bound", base="prob")
  z = jnp.broadcast_to(jnp.asarray([0.0, -1000.0], jnp.float32), SHAPE_V2)  # a case's shape
  t = jnp.ones(SHAPE_V2[:-1], jnp.int32)
  m = jnp.ones(SHAPE_V2[:-1], jnp.float32)
  np.testing.assert_allclose(ref.masked_weights(_as64(z), np.asarray(t), np.asarray(m), config), 0.0, atol=1e-200)
  fn = lambda z: losses.weighted_loss(z, t, m, config)[0]  # noqa: E731
  tw = lambda z: losses.token_weights(z, t, m, config)  # noqa: E731
  if use_jit:
    fn, tw = jax.jit(fn), jax.jit(tw)
  w = tw(z)
  loss, grad = jax.value_and_grad(fn)(z)
  assert np.all(np.isfinite(w)), w
  np.testing.assert_allclose(w, 0.0, atol=1e-30)
  assert np.isfinite(loss) and np.all(np.isfinite(grad)), (loss, grad)


def test_all_zero_mask():
  """No supervised token: loss 0, zero gradient and weights, finite aux, for every config."""
  logits, targets, _ = make_case("v1000")
  mask = np.zeros(targets.shape, np.float32)
  for config_id in CONFIGS:
    loss, aux, grad, w = _run(make_config(**CONFIGS[config_id]), logits, targets, mask)
    assert float(loss) == 0.0, config_id
    assert np.all(np.asarray(grad) == 0.0), config_id
    assert np.all(np.asarray(w) == 0.0), config_id
    assert float(aux["tokens"]) == 0.0
    for k, v in aux.items():
      assert np.all(np.isfinite(v)), (config_id, k)


def test_micro_steps_with_shared_context_sum_to_full_batch():
  """Gradient accumulation: with a BatchContext built from the log-probs and mask of the whole
  batch (two micro-steps here), the micro-step losses add up to the full-batch loss (TALR's
  median and the token count span both micro-steps)."""
  micro = [make_case("v1000"), make_case("tiny_v1000")]
  full = [np.concatenate([np.asarray(mc[i]) for mc in micro]) for i in range(3)]
  lp = jnp.concatenate([losses.token_stats(z, jnp.asarray(t), with_expected_rank=False).log_prob
                        for z, t, _ in micro])
  for config_id in ["talr", "talr_unnormalized", "sft", "ranktuner_exact_prob"]:
    config = make_config(**CONFIGS[config_id])
    ctx = losses.batch_context(lp, jnp.asarray(full[2]), config)
    parts = [losses.weighted_loss(z, jnp.asarray(t), jnp.asarray(m), config, context=ctx)[0]
             for z, t, m in micro]
    np.testing.assert_allclose(sum(parts), ref.loss(full[0].astype(np.float64), full[1], full[2], config),
                               rtol=1e-4, err_msg=config_id)


# ---------------------------------------------------------------------------- properties


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True, database=None,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(
    v=st.sampled_from([2, 3, 8, 64]),
    scale=st.sampled_from([0.0, 1e-3, 0.5, 2.0, 8.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_expected_rank_and_scale_properties(v, scale, seed):
  rng = np.random.default_rng(seed)
  z = jnp.asarray(scale * rng.standard_normal((4, v)), jnp.float32)
  t = jnp.asarray(rng.integers(0, v, size=(4,)), jnp.int32)
  s, scale_s = _stats_and_exact_scale(z, t)
  e = np.asarray(s.expected_rank, np.float64)
  h = np.asarray(s.entropy_bits, np.float64)
  tol = 1e-5  # float32 sums
  assert np.all(e >= 1.0 - tol)
  assert np.all(e <= (v + 1) / 2 * (1 + tol))
  massey = np.where(h >= 2.0, 2.0 ** (h - 2.0) + 1.0, -np.inf)
  assert np.all(e >= massey * (1 - tol))
  r = np.asarray(s.rank)
  assert np.all((r >= 1) & (r <= v))
  p = np.exp(np.asarray(s.log_prob, np.float64))
  assert np.all(r <= (1.0 / p) * (1 + tol))
  scale_s = np.asarray(scale_s)
  assert np.all((scale_s > 0.5) & (scale_s < 2.0))
  np.testing.assert_allclose(scale_s, ref.ranktuner_scale(_as64(z), np.asarray(t), "exact"), rtol=2e-5)


@jax.jit
def _stats_and_exact_scale(z, t):
  """Token statistics and the exact-form RankTuner scale S_t (uniform base: w = S)."""
  config = make_config(name="ranktuner", form="exact", base="uniform")
  return losses.token_stats(z, t), losses.token_weights(z, t, jnp.ones(t.shape), config)
