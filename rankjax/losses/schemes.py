"""The built-in loss schemes (spec sections 3-5), one `registry.Scheme` entry each, registered on import.

A new scheme is one more entry in `BUILTIN` (see `rankjax.losses.registry` for the recipe). The formulas live in
`rankjax.losses.weights`; an entry says which statistics, config fields, checks and batch constants they need.
"""

from __future__ import annotations

import jax.numpy as jnp

from rankjax.models.errors import ConfigError
from rankjax.losses import weights
from rankjax.losses.registry import ANCHOR_LOG_PROB, Scheme, StatNeeds, WeightArgs, check_choice, register

RANKTUNER_FORMS = ("exact", "bound")
RANKTUNER_BASES = ("prob", "uniform")


def _sft_weight(args: WeightArgs):
  return jnp.ones_like(args.stats.log_prob)


def _dft_weight(args: WeightArgs):
  return jnp.exp(args.stats.log_prob)


def _prob_power_weight(args: WeightArgs):
  # sg(p^k) formed as exp(k log p): k = 0 gives exactly 1 (SFT), k = 1 exactly exp(log p) (DFT's weight).
  return jnp.exp(float(args.config.prob_power_k) * args.stats.log_prob)


def _prob_power_validate(config):
  k = float(config.prob_power_k)
  if not 0.0 <= k <= 1000.0:
    raise ConfigError(f"loss config: prob_power_k={config.prob_power_k} must lie in [0, 1000] (0: SFT, 1: DFT)")


def _talr_weight(args: WeightArgs):
  return weights.talr_weight(args.stats.log_prob, args.batch)


def _talr_constants(log_prob, mask, config, axis_name):
  return weights.talr_context(log_prob, mask, config.talr_min_tau, config.talr_normalize, axis_name)


def _talr_validate(config):
  if not float(config.talr_min_tau) > 0:
    raise ConfigError(f"loss config: talr_min_tau={config.talr_min_tau} must be > 0")


def _eaft_weight(args: WeightArgs):
  config = args.config
  return weights.eaft_weight(args.topk_entropy, min(int(config.eaft_top_k), args.vocab_size), config.eaft_alpha)


def _eaft_validate(config):
  if int(config.eaft_top_k) < 2:
    raise ConfigError(f"loss config: eaft_top_k={config.eaft_top_k} must be >= 2 (its entropy is divided by ln K)")
  if not float(config.eaft_alpha) > 0:
    raise ConfigError(f"loss config: eaft_alpha={config.eaft_alpha} must be > 0")


def _ranktuner_weight(args: WeightArgs):
  config = args.config
  return weights.ranktuner_weight(args.stats, config.form, config.base, config.bound_floor)


def _ranktuner_needs(config) -> StatNeeds:
  """exact: R_t and E[R_t]; bound: H_t and R_t (log p_max is always there)."""
  if config.form == "exact":
    return StatNeeds(rank=True, expected_rank=True)
  return StatNeeds(entropy=True, rank=True)


def _ranktuner_validate(config):
  check_choice(config, "form", RANKTUNER_FORMS)
  check_choice(config, "base", RANKTUNER_BASES)
  if not 1e-30 <= float(config.bound_floor) < 1.0:
    raise ConfigError(f"loss config: bound_floor={config.bound_floor} must be in [1e-30, 1) (S_t <= 1 / bound_floor "
                     "must stay finite in float32)")


def _asft_term(log_prob, args: WeightArgs):
  del log_prob
  return float(args.config.asft_beta) * args.stats.anchor_kl


def _asft_validate(config):
  if not 0.0 <= float(config.asft_beta) <= 1e4:
    raise ConfigError(f"loss config: asft_beta={config.asft_beta} must lie in [0, 1e4] (0: DFT)")


def _psft_weight(args: WeightArgs):
  # r_t = p_t / p_old,t. The gradient of -min(r A, clip(r, 1 - eps, 1 + eps) A) with A = 1 is -r grad log p where
  # r <= 1 + eps and 0 above (A > 0: the lower clip never binds), i.e. the gradient of sg(r 1[r <= 1 + eps]) (-log p).
  ratio = jnp.exp(args.stats.log_prob - args.inputs[ANCHOR_LOG_PROB])
  return jnp.where(ratio <= 1.0 + float(args.config.psft_epsilon), ratio, 0.0)


def _psft_validate(config):
  if not 0.0 < float(config.psft_epsilon) <= 10.0:
    raise ConfigError(f"loss config: psft_epsilon={config.psft_epsilon} must lie in (0, 10]")
  if int(config.psft_refresh_steps) < 1 or int(config.psft_refresh_steps) != float(config.psft_refresh_steps):
    raise ConfigError(f"loss config: psft_refresh_steps={config.psft_refresh_steps} must be an integer >= 1 "
                      "(1: the old policy is the current one, which is SFT)")


BUILTIN = (
    Scheme(name="sft", weight=_sft_weight),
    Scheme(name="dft", weight=_dft_weight),
    Scheme(name="talr", weight=_talr_weight, validate=_talr_validate, batch_constants=_talr_constants,
           batch_aux={"talr_tau": lambda constants: constants.tau},
           fields={"talr_min_tau": 1e-3,  # floor on TALR's temperature (nats)
                   "talr_normalize": True}),  # TALR weights rescaled to mean 1 over supervised tokens
    Scheme(name="eaft", weight=_eaft_weight, validate=_eaft_validate,
           needs=lambda config: StatNeeds(topk_entropy=int(config.eaft_top_k)),
           fields={"eaft_top_k": 20, "eaft_alpha": 1.0},
           min_vocab=2, min_vocab_reason="its entropy is divided by ln min(eaft_top_k, V)"),
    # The diagnostics report RankTuner's weight and relative scale whatever the scheme, so its fields are read
    # by every run (`rankjax.losses.reduction`).
    Scheme(name="ranktuner", weight=_ranktuner_weight, validate=_ranktuner_validate, needs=_ranktuner_needs,
           fields={"form": "exact",  # "exact" uses E[R_t]; "bound" the sort-free surrogate
                   "base": "prob",  # base weight b_t: "prob" (p_t) or "uniform" (1)
                   # Bound form: S_t = max(p_t s_t, bound_floor)^(-K_t), so S_t <= 1 / bound_floor (spec section
                   # 3; the reference implementation's 1e-6).
                   "bound_floor": 1e-6}),
    # -p^k family ("Beyond Log Likelihood", arXiv 2510.00526): the weight sg(p_t^k) on -log p_t has the gradient of
    # (1 - p_t^k) / k; its abstract names -p (k = 1) and -p^10 as the objectives that beat NLL on strong bases.
    Scheme(name="prob_power", weight=_prob_power_weight, validate=_prob_power_validate,
           fields={"prob_power_k": 10.0}),  # the exponent k >= 0 (0: SFT; 1: DFT)
    # Anchored SFT (ASFT, arXiv 2509.23753): DFT's weight sg(p_t) plus beta KL(p_ref || p) per token, p_ref the
    # initial model's distribution (the direction and the 0.1 default of the authors' code, zhuchichi56/ASFT).
    Scheme(name="asft", weight=_dft_weight, token_loss=_asft_term, validate=_asft_validate, anchor="initial",
           anchor_kl=True,
           fields={"asft_beta": 0.1}),  # beta, the KL's coefficient (nats of KL per nat of weighted NLL; 0: DFT)
    # Proximal SFT (PSFT, arXiv 2508.17784): PPO's clipped surrogate with advantage 1 against an old-policy snapshot,
    # trained through its gradient-equivalent weight sg(r_t 1[r_t <= 1 + eps]) on -log p_t.
    Scheme(name="psft", weight=_psft_weight, validate=_psft_validate, inputs=(ANCHOR_LOG_PROB,),
           anchor="snapshot", anchor_refresh=lambda config: int(config.psft_refresh_steps),
           fields={"psft_epsilon": 0.2,  # the clip range eps of r_t = p_t / p_old,t (PPO's usual 0.2; a choice)
                   "psft_refresh_steps": 4}),  # optimizer steps between old-policy refreshes (a choice; 1: SFT)
)

for _scheme in BUILTIN:
  register(_scheme, builtin=True)
