"""Each weighting family's per-token importance score over the pool, from the library's own functions.

Families (the score ranked for each is `family_table(...)[name]`):
  entropy, probability: the two families the paper contrasts, before any base weight: H_t (bits) and the
    hardness -log p_t (nats);
  ranktuner_scale_exact / _bound: RankTuner's relative scale S_t alone (exact: E[R_t] as the loss config
    computes it; bound: spec section 3, with the config's floor);
  sft, dft, talr, eaft, ranktuner_{exact,bound}_{prob,uniform}: each loss scheme's final weight w_t
    (`rankjax.losses.registry.scheme_weight`), TALR's temperature and normaliser taken over the whole pool of
    supervised tokens as its global batch. With the uniform base the RankTuner weight is S_t itself, so
    ranktuner_*_uniform rank exactly as ranktuner_scale_* (a consistency check).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from rankjax.losses import registry, weights
from rankjax.losses.stats import TokenStats

SCHEMES = (("sft", "sft", None, None), ("dft", "dft", None, None), ("talr", "talr", None, None),
           ("eaft", "eaft", None, None),
           ("ranktuner_exact_prob", "ranktuner", "exact", "prob"),
           ("ranktuner_exact_uniform", "ranktuner", "exact", "uniform"),
           ("ranktuner_bound_prob", "ranktuner", "bound", "prob"),
           ("ranktuner_bound_uniform", "ranktuner", "bound", "uniform"))
FAMILIES = ("entropy", "probability", "ranktuner_scale_exact", "ranktuner_scale_bound") + tuple(s[0] for s in SCHEMES)


def family_table(loss_config, tie_seed: int) -> dict[str, str]:
  """Returns {family: the quantity ranked for it, in words and units}."""
  c = loss_config
  er = f"E[R_t] by {c.expected_rank}"
  return {
      "entropy": "H_t in bits",
      "probability": "-log p_t in nats (hardness)",
      "ranktuner_scale_exact": f"S_t = 2^(f(E[R_t]) - f(R_t)), {er}",
      "ranktuner_scale_bound": f"S_t = max(p_t s_t, {c.bound_floor:g})^(-K_t) (bound form)",
      "sft": f"w_t = 1 (all tied: top set drawn at random, seed {tie_seed})",
      "dft": "w_t = p_t",
      "talr": f"w_t = p_t^(1/tau) / mean over the pool, tau = max(median NLL of the pool, {c.talr_min_tau:g}) nats",
      "eaft": f"w_t = (H^top{c.eaft_top_k}_t / ln {c.eaft_top_k})^{c.eaft_alpha:g}, H^topK in nats",
      "ranktuner_exact_prob": f"w_t = p_t S_t (exact, {er})",
      "ranktuner_exact_uniform": f"w_t = S_t (exact, {er})",
      "ranktuner_bound_prob": f"w_t = p_t S_t (bound, floor {c.bound_floor:g})",
      "ranktuner_bound_uniform": f"w_t = S_t (bound, floor {c.bound_floor:g})",
  }


def scheme_config(loss_config, name: str, form: str | None, base: str | None) -> ml_collections.ConfigDict:
  """A copy of `loss_config` naming scheme `name` (and RankTuner's form and base when given)."""
  c = ml_collections.ConfigDict(loss_config.to_dict())
  c.name = name
  if form is not None:
    c.form, c.base = form, base
  return c


def family_scores(tokens: dict, loss_config, vocab_size: int) -> tuple[dict[str, np.ndarray], dict]:
  """Returns ({family: float32 score per pool token, FAMILIES order}, extras) from the pool's statistics
  `tokens` (log_prob and log_prob_max in nats, entropy_bits, rank, expected_rank, topk_entropy_nats, as
  `token_scores.score_examples` gives them); `vocab_size` is the model's (EAFT's K = min(top_k, V)).
  extras: TALR's tau (nats) and log mean raw weight over the pool."""
  stats = TokenStats(log_prob=jnp.asarray(tokens["log_prob"]), entropy_bits=jnp.asarray(tokens["entropy_bits"]),
                     rank=jnp.asarray(tokens["rank"]), expected_rank=jnp.asarray(tokens["expected_rank"]),
                     log_prob_max=jnp.asarray(tokens["log_prob_max"]))
  topk = jnp.asarray(tokens["topk_entropy_nats"])
  everywhere = jnp.ones_like(stats.log_prob)
  talr = weights.talr_context(stats.log_prob, everywhere, float(loss_config.talr_min_tau),
                              bool(loss_config.talr_normalize))
  scores = {
      "entropy": stats.entropy_bits,
      "probability": -stats.log_prob,
      "ranktuner_scale_exact": weights.ranktuner_scale_exact(stats.rank, stats.expected_rank),
      "ranktuner_scale_bound": jnp.exp(weights.ranktuner_log_scale_bound(
          stats.log_prob, stats.entropy_bits, stats.rank, stats.log_prob_max, float(loss_config.bound_floor))),
  }
  for family, name, form, base in SCHEMES:
    scores[family] = registry.scheme_weight(stats, scheme_config(loss_config, name, form, base), talr, topk, vocab_size)
  scores = {k: np.asarray(v, np.float32) for k, v in scores.items()}
  for k, v in scores.items():
    if not np.all(np.isfinite(v)):
      raise ValueError(f"noise diagnostic: family {k} has {int((~np.isfinite(v)).sum())} non-finite scores")
  return scores, {"talr_tau_nats": float(talr.tau), "talr_log_mean_weight": float(talr.log_mean_weight)}
