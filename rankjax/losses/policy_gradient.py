"""Policy-gradient pieces of GRPO-style training, per token or per sequence; pure jnp, no model.

Advantages of a group of G completions of one prompt (`group_advantages`), the clipped surrogate with the behaviour
policy's log-probabilities (`clipped_surrogate`), the k3 estimator of KL(pi || ref) (`k3_kl`), the token weights
(`entropy_top_weights`; RankTuner's S_t is `losses.weights.ranktuner_log_scale`) and the reductions over completion
tokens (`aggregate`). Log-probabilities are natural logs (nats).

Sources: GRPO (Shao et al. 2024, arXiv 2402.03300); Dr. GRPO (Liu et al. 2025, arXiv 2503.20783: no std, a constant
length normaliser); RLOO (Ahmadian et al. 2024, arXiv 2402.14740); DAPO's eps_high (Yu et al. 2025, arXiv
2503.14476); k3 (Schulman 2020, "Approximating KL divergence"); high-entropy token selection (Wang et al. 2025,
arXiv 2506.01939).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ESTIMATORS = ("grpo", "drgrpo", "rloo")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "constant")


def group_advantages(rewards: jax.Array, estimator: str, eps: float = 1e-6) -> jax.Array:
  """Per-completion advantages [P, G] from rewards [P, G] (P prompts, G completions each).

  grpo: (r - mean) / (std + eps), std the population std of the group (ddof 0, as tunix); a group whose rewards
  are all equal gets 0. drgrpo: r - mean. rloo: r_i - mean of the other G - 1 rewards = G / (G - 1) (r_i - mean).
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  if rewards.ndim != 2:
    raise ValueError(f"group_advantages: rewards must be [prompts, generations], got shape {rewards.shape}")
  g = rewards.shape[1]
  centred = rewards - rewards.mean(axis=1, keepdims=True)
  if estimator == "grpo":
    return centred / (rewards.std(axis=1, keepdims=True) + eps)
  if estimator == "drgrpo":
    return centred
  if estimator == "rloo":
    if g < 2:
      raise ValueError("group_advantages: rloo needs at least 2 generations per prompt")
    return centred * (g / (g - 1))
  raise ValueError(f"group_advantages: estimator {estimator!r} is not one of {ESTIMATORS}")


def clipped_surrogate(log_prob: jax.Array, old_log_prob: jax.Array, advantages: jax.Array, eps_low: float,
                      eps_high: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """PPO's clipped objective as a per-token loss to minimise: -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)
  with rho = exp(log_prob - old_log_prob) (old_log_prob is treated as a constant).

  Returns (loss, ratio, clipped): `clipped` is 1.0 where the clipped term is the smaller one and differs from the
  unclipped one (the token then gets no gradient).
  """
  ratio = jnp.exp(log_prob - jax.lax.stop_gradient(old_log_prob))
  unclipped = ratio * advantages
  clipped_ratio = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  clipped_obj = clipped_ratio * advantages
  objective = jnp.minimum(unclipped, clipped_obj)
  clipped = jax.lax.stop_gradient((clipped_obj < unclipped).astype(jnp.float32))
  return -objective, jax.lax.stop_gradient(ratio), clipped


def k3_kl(log_prob: jax.Array, ref_log_prob: jax.Array) -> jax.Array:
  """Per-token k3 estimate of KL(pi || ref) at the sampled token: exp(d) - d - 1 with d = ref - log_prob (nats);
  >= 0, and 0 where the two agree. Differentiable in log_prob; ref_log_prob is a constant."""
  d = jax.lax.stop_gradient(ref_log_prob) - log_prob
  return jnp.exp(d) - d - 1.0


def entropy_top_weights(entropy: jax.Array, mask: jax.Array, fraction: float) -> jax.Array:
  """1.0 on the `fraction` of supervised tokens (mask > 0) with the highest entropy, 0.0 elsewhere (stop-gradient).

  The threshold is the (1 - fraction) quantile of the supervised tokens' entropies over the whole array (the global
  batch when called on it); ties at the threshold are kept.
  """
  entropy = jax.lax.stop_gradient(entropy).astype(jnp.float32)
  on = mask > 0
  flat = jnp.where(on, entropy, -jnp.inf).reshape(-1)
  n = jnp.sum(on)
  keep = jnp.maximum(jnp.ceil(fraction * n), 1).astype(jnp.int32)
  ordered = jnp.sort(flat)[::-1]
  threshold = ordered[jnp.clip(keep - 1, 0, flat.shape[0] - 1)]
  return jnp.where(on & (entropy >= threshold), 1.0, 0.0)


def aggregate(per_token: jax.Array, mask: jax.Array, mode: str, max_tokens: int, num_tokens=None,
              num_sequences=None) -> jax.Array:
  """Reduces a per-token loss [N, T] over completion tokens (mask [N, T]) to a scalar.

  token_mean: sum over all tokens / number of tokens. seq_mean_token_mean: the mean over sequences of each
  sequence's token mean (sequences without tokens count as 0). constant (Dr. GRPO): sum / (N * max_tokens).
  `num_tokens` / `num_sequences`: the whole batch's counts when `per_token` is one micro-batch of it (the
  micro-batches' results then add up to the whole batch's); default this array's own.
  """
  mask = mask.astype(per_token.dtype)
  total = jnp.sum(per_token * mask)
  sequences = per_token.shape[0] if num_sequences is None else num_sequences
  if mode == "token_mean":
    return total / jnp.maximum(jnp.sum(mask) if num_tokens is None else num_tokens, 1.0)
  if mode == "seq_mean_token_mean":
    per_seq = jnp.sum(per_token * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    return jnp.sum(per_seq) / sequences
  if mode == "constant":
    return total / (sequences * float(max_tokens))
  raise ValueError(f"aggregate: mode {mode!r} is not one of {AGGREGATIONS}")
