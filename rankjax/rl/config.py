"""`config.rl`: the fields of GRPO-style training (rankjax.rl), their defaults and their validation."""

from __future__ import annotations

import ml_collections

from rankjax.losses import policy_gradient
from rankjax.models.errors import ConfigError

TOKEN_WEIGHTS = ("none", "ranktuner", "entropy_top")
WEIGHT_PLACEMENTS = ("surrogate", "advantage")
RANKTUNER_FORMS = ("exact", "bound")


def default_config() -> ml_collections.ConfigDict:
  """The RL group a config adds as `config.rl` (its presence makes `rankjax.main` run `rankjax.rl.train_rl`)."""
  c = ml_collections.ConfigDict()
  # Rollouts: each step, prompts_per_step prompts of config.data's split (in a seeded order, epoch after epoch),
  # num_generations completions each from the sampling engine.
  c.prompts_per_step = 8
  c.num_generations = 8
  c.temperature = 1.0
  c.top_p = 1.0
  c.max_new_tokens = 64
  # Rewards: a comma list of reward functions by name (rankjax.rl.rewards.REWARDS), each optionally `name:weight`;
  # the reward of a completion is the weighted sum.
  c.rewards = "correct"
  c.grading_timeout_s = 5.0
  c.grading_workers = 0  # 0: min(CPU count, 8) worker processes
  # Advantages and the loss.
  c.advantage = "grpo"  # grpo | drgrpo | rloo (rankjax.losses.policy_gradient.group_advantages)
  c.updates_per_batch = 1  # mu: optimizer steps on each rollout batch (the behaviour policy's log-probs fixed)
  c.epsilon = 0.2  # clip range below 1
  c.epsilon_high = 0.0  # clip range above 1; 0: the same as epsilon (DAPO's clip-higher uses e.g. 0.28)
  c.beta = 0.0  # weight of the k3 KL to the reference policy; 0 keeps no reference
  c.aggregation = "token_mean"  # token_mean | seq_mean_token_mean | constant (Dr. GRPO)
  c.length_normalizer = 0  # the constant of aggregation='constant'; 0: max_new_tokens
  # Token weights (stop-gradient) on each completion token's surrogate term.
  c.token_weight = "none"  # none | ranktuner | entropy_top
  c.weight_placement = "surrogate"  # surrogate: w_t (surrogate + beta KL); advantage: A w_t inside the clip
  c.ranktuner_form = "bound"  # exact | bound (spec sections 2 and 3)
  c.ranktuner_bound_floor = 1e-6
  c.entropy_top_fraction = 0.2
  c.dump_every = 0  # every N steps: WORKDIR/rollouts/step_N.jsonl (prompts, completions, rewards, token weights)
  return c


def validate(config) -> None:
  """Raises ConfigError naming the field for RL values no run can use."""
  rl = config.rl
  for field in ("prompts_per_step", "num_generations", "max_new_tokens", "updates_per_batch"):
    if int(rl[field]) < 1:
      raise ConfigError(f"config.rl.{field}={rl[field]} must be >= 1")
  if rl.advantage not in policy_gradient.ESTIMATORS:
    raise ConfigError(f"config.rl.advantage={rl.advantage!r} is not one of {policy_gradient.ESTIMATORS}")
  if rl.advantage in ("grpo", "rloo") and int(rl.num_generations) < 2:
    raise ConfigError(f"config.rl.advantage={rl.advantage!r} needs config.rl.num_generations >= 2 (a group)")
  if rl.aggregation not in policy_gradient.AGGREGATIONS:
    raise ConfigError(f"config.rl.aggregation={rl.aggregation!r} is not one of {policy_gradient.AGGREGATIONS}")
  if rl.token_weight not in TOKEN_WEIGHTS:
    raise ConfigError(f"config.rl.token_weight={rl.token_weight!r} is not one of {TOKEN_WEIGHTS}")
  if rl.weight_placement not in WEIGHT_PLACEMENTS:
    raise ConfigError(f"config.rl.weight_placement={rl.weight_placement!r} is not one of {WEIGHT_PLACEMENTS}")
  if rl.ranktuner_form not in RANKTUNER_FORMS:
    raise ConfigError(f"config.rl.ranktuner_form={rl.ranktuner_form!r} is not one of {RANKTUNER_FORMS}")
  if not 0.0 < float(rl.entropy_top_fraction) <= 1.0:
    raise ConfigError(f"config.rl.entropy_top_fraction={rl.entropy_top_fraction} must lie in (0, 1]")
  if not 0.0 < float(rl.epsilon) < 1.0:
    raise ConfigError(f"config.rl.epsilon={rl.epsilon} must lie in (0, 1)")
  if float(rl.epsilon_high) < 0.0:
    raise ConfigError(f"config.rl.epsilon_high={rl.epsilon_high} must be >= 0 (0: the same as epsilon)")
  if float(rl.beta) < 0.0:
    raise ConfigError(f"config.rl.beta={rl.beta} must be >= 0 (0: no KL, no reference policy)")
  if float(rl.temperature) <= 0.0:
    raise ConfigError(f"config.rl.temperature={rl.temperature} must be > 0 (rollouts are sampled)")
  if not 0.0 < float(rl.top_p) <= 1.0:
    raise ConfigError(f"config.rl.top_p={rl.top_p} must lie in (0, 1]")
  if int(rl.length_normalizer) < 0 or int(rl.dump_every) < 0 or int(rl.grading_workers) < 0:
    raise ConfigError("config.rl.length_normalizer, dump_every and grading_workers must be >= 0")
  if float(rl.grading_timeout_s) <= 0:
    raise ConfigError(f"config.rl.grading_timeout_s={rl.grading_timeout_s} must be > 0")
  from rankjax.rl import rewards  # noqa: PLC0415
  rewards.parse(rl.rewards)
  rows = int(rl.prompts_per_step) * int(rl.num_generations)
  if rows % int(config.grad_accum_steps):
    raise ConfigError(f"config.grad_accum_steps={config.grad_accum_steps} does not divide the "
                      f"{rows} rollouts of a step (rl.prompts_per_step x rl.num_generations)")


def eps_high(rl) -> float:
  """The clip range above 1: epsilon_high, or epsilon when it is 0."""
  return float(rl.epsilon_high) or float(rl.epsilon)
