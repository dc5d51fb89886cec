"""Reinforcement learning from verifiable rewards: GRPO / Dr. GRPO / RLOO with optional token weights (RankTuner's
relative scale, high-entropy selection). `python -m rankjax.main --config=configs/grpo_synthetic.py` runs it; the
pure pieces are `rankjax.losses.policy_gradient`."""

from rankjax.rl.config import default_config, validate
from rankjax.rl.rewards import REWARDS, RewardError, register

__all__ = ["default_config", "validate", "REWARDS", "RewardError", "register"]
