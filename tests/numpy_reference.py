"""Float64 NumPy reference of the token-weighting losses, written from ../shared/spec/ranktuner.md.

Deliberately independent of `rankjax.losses`: plain NumPy, float64, no shared helpers.
Everything that can over/underflow in float64 (TALR's p^(1/tau), RankTuner's bound form)
is evaluated in the log domain, so the reference stays finite where the maths is finite.

Shapes: logits [..., T, V], targets [..., T] (integer ids), mask [..., T] (0/1).
Per-position outputs have shape [..., T]; the gradient has the logits' shape.
"""

from __future__ import annotations

import math

import numpy as np

LOG2 = math.log(2.0)


def _f64(x):
  return np.asarray(x).astype(np.float64)


def log_softmax(logits):
  """log p_{t,i} in nats, float64."""
  z = _f64(logits)
  zmax = np.max(z, axis=-1, keepdims=True)  # finite: at least one logit per row is finite
  lse = zmax + np.log(np.sum(np.exp(z - zmax), axis=-1, keepdims=True))
  return z - lse


def softmax(logits):
  return np.exp(log_softmax(logits))


def target_log_prob(logits, targets):
  """log p_t (nats) of the target at each position."""
  log_p = log_softmax(logits)
  t = np.asarray(targets).astype(np.int64)
  return np.take_along_axis(log_p, t[..., None], axis=-1)[..., 0]


def entropy_bits(logits):
  """H_t = -sum_i p_i log2 p_i (terms with p_i = 0 count 0)."""
  log_p = log_softmax(logits)
  p = np.exp(log_p)
  terms = p * np.where(p > 0, log_p, 0.0)  # 0 log 0 = 0 (also for -inf logits)
  return -np.sum(terms, axis=-1) / LOG2


def rank(logits, targets):
  """R_t = #{i : z_i >= z_target}, 1-indexed; ties count against the target."""
  z = _f64(logits)
  t = np.asarray(targets).astype(np.int64)
  z_t = np.take_along_axis(z, t[..., None], axis=-1)
  return np.sum(z >= z_t, axis=-1).astype(np.int64)


def expected_rank(logits):
  """E[R_t] = sum_k k p_(k), p_(k) the k-th largest probability (descending sort)."""
  p = softmax(logits)
  desc = -np.sort(-p, axis=-1)
  k = np.arange(1, p.shape[-1] + 1, dtype=np.float64)
  return np.sum(desc * k, axis=-1)


def expected_rank_pairwise(logits):
  """E[R] = 1 + sum_{i<j} min(p_i, p_j): an independent check of `expected_rank` (small V only)."""
  p = softmax(logits)
  mins = np.minimum(p[..., :, None], p[..., None, :])
  v = p.shape[-1]
  upper = np.triu(np.ones((v, v), dtype=bool), k=1)
  return 1.0 + np.sum(np.where(upper, mins, 0.0), axis=(-2, -1))


def token_stats(logits, targets):
  """The four statistics of spec section 2 as a dict of float64 (rank int64) arrays."""
  return {
      "log_prob": target_log_prob(logits, targets),
      "entropy_bits": entropy_bits(logits),
      "rank": rank(logits, targets),
      "expected_rank": expected_rank(logits),
  }


# ---------------------------------------------------------------------------- weights


def _logmeanexp(a):
  a = np.asarray(a, dtype=np.float64)
  amax = np.max(a)
  return amax + np.log(np.mean(np.exp(a - amax)))


def talr_tau(logits, targets, mask, min_tau):
  """tau = max(numpy median of the NLL over supervised tokens, min_tau); min_tau if none."""
  nll = -target_log_prob(logits, targets)
  sup = np.asarray(mask) > 0
  med = np.median(nll[sup]) if np.any(sup) else 0.0
  return max(float(med), float(min_tau))


def talr_weight(logits, targets, mask, min_tau, normalize):
  """p_t^(1/tau), divided by its mean over supervised tokens when `normalize` (log domain)."""
  lp = target_log_prob(logits, targets)
  tau = talr_tau(logits, targets, mask, min_tau)
  log_w = lp / tau
  sup = np.asarray(mask) > 0
  if normalize and np.any(sup):
    log_w = log_w - _logmeanexp(log_w[sup])
  return np.exp(log_w)


def eaft_weight(logits, top_k, alpha):
  """(H^topK / ln K)^alpha, H^topK in nats of the softmax over the K = min(top_k, V) largest logits."""
  z = _f64(logits)
  k = min(int(top_k), z.shape[-1])
  top = -np.sort(-z, axis=-1)[..., :k]
  log_q = log_softmax(top)
  q = np.exp(log_q)
  h = -np.sum(q * np.where(q > 0, log_q, 0.0), axis=-1)
  return (h / math.log(k)) ** float(alpha)


def rank_utility(x):
  """f(x) = 1 / log2(x + 1)."""
  return 1.0 / np.log2(_f64(x) + 1.0)


def max_prob(logits):
  """p_max,t: the largest probability at each position."""
  return np.exp(np.max(log_softmax(logits), axis=-1))


def massey_s(logits):
  """s_t = 2^(H-2) + 1 where H >= 2 bits (Massey), else 2 - p_max."""
  h = entropy_bits(logits)
  return np.where(h >= 2.0, 2.0 ** (h - 2.0) + 1.0, 2.0 - max_prob(logits))


def ranktuner_log_scale(logits, targets, form, floor=1e-6):
  """ln S_t. exact: S = 2^(f(E[R]) - f(R)). bound (spec section 3): s from `massey_s`, xi = max(R, s),
  K = log2(xi+1)^-2, S = max(p s, floor)^-K."""
  if form == "exact":
    r = rank(logits, targets)
    e = expected_rank(logits)
    return LOG2 * (rank_utility(e) - rank_utility(r))
  if form == "bound":
    s = massey_s(logits)
    xi = np.maximum(rank(logits, targets).astype(np.float64), s)
    kk = np.log2(xi + 1.0) ** -2
    return -kk * np.maximum(target_log_prob(logits, targets) + np.log(s), np.log(floor))
  raise ValueError(f"unknown form {form!r}")


def ranktuner_scale(logits, targets, form, floor=1e-6):
  return np.exp(ranktuner_log_scale(logits, targets, form, floor))


def ranktuner_weight(logits, targets, form, base, floor=1e-6):
  """w = p_t S_t ("prob") or S_t ("uniform"); the product is taken in the log domain."""
  log_s = ranktuner_log_scale(logits, targets, form, floor)
  if base == "prob":
    log_w = target_log_prob(logits, targets) + log_s
  elif base == "uniform":
    log_w = log_s
  else:
    raise ValueError(f"unknown base {base!r}")
  return np.exp(log_w)


def weights(logits, targets, mask, config):
  """Unmasked weight of `config` (anything with the loss-config attributes) at every position."""
  name = config.name
  shape = np.asarray(targets).shape
  if name == "sft":
    return np.ones(shape, dtype=np.float64)
  if name == "dft":
    return np.exp(target_log_prob(logits, targets))
  if name == "prob_power":  # p^k, written as a power (the scheme forms exp(k log p))
    return np.power(np.exp(target_log_prob(logits, targets)), float(config.prob_power_k))
  if name == "talr":
    return talr_weight(logits, targets, mask, config.talr_min_tau, config.talr_normalize)
  if name == "eaft":
    return eaft_weight(logits, config.eaft_top_k, config.eaft_alpha)
  if name == "ranktuner":
    return ranktuner_weight(logits, targets, config.form, config.base, config.bound_floor)
  raise ValueError(f"unknown scheme {name!r}")


def masked_weights(logits, targets, mask, config):
  """Weights with 0 wherever the mask is 0."""
  w = weights(logits, targets, mask, config)
  return np.where(np.asarray(mask) > 0, w, 0.0)


# ---------------------------------------------------------------------------- loss


def num_tokens(mask):
  return float(np.sum(np.asarray(mask) > 0))


def loss(logits, targets, mask, config):
  """sum(m w nll) / max(sum m, 1), in nats per supervised token."""
  w = masked_weights(logits, targets, mask, config)
  nll = -target_log_prob(logits, targets)
  m = np.asarray(mask) > 0
  return float(np.sum(np.where(m, w * nll, 0.0)) / max(num_tokens(mask), 1.0))


def loss_grad(logits, targets, mask, config):
  """d loss / d logits = w (softmax - onehot) / N with w stop-gradient; masked rows are 0."""
  w = masked_weights(logits, targets, mask, config)
  p = softmax(logits)
  t = np.asarray(targets).astype(np.int64)
  onehot = np.zeros_like(p)
  np.put_along_axis(onehot, t[..., None], 1.0, axis=-1)
  m = (np.asarray(mask) > 0)[..., None]
  g = np.where(m, w[..., None] * (p - onehot), 0.0)
  return g / max(num_tokens(mask), 1.0)
