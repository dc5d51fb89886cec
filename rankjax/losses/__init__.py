"""Token-level loss reweighting: per-token statistics, scheme weights, global-batch reduction.

Entry points of training and evaluation: `head_loss` (the loss of a model's head output, logits
or (hidden, kernel), dense or fused), `whole_batch_context` (gradient accumulation's shared
constants) and `wants_hidden` (which head output to ask the model for).
Building blocks: `default_config`, `validate_config`, `token_stats`, `token_weights`,
`weighted_loss`, `linear_weighted_loss` (LM head fused, chunked), `linear_token_stats`,
`batch_context`, `accumulate_aux`, `check_targets`, `check_mask`.
The schemes: `SCHEMES` (their names), `Scheme`, `register`, `unregister` (`rankjax.losses.registry` says how
to add one).

Layout: `registry` (the table) <- `schemes` (the built-in entries) <- `config`; `stats`, `weights` (formulas);
`inputs` (checks); `reduction` (weights, masking, the reduction and aux, shared) <- `weighted_loss` (dense) and
`fused` (LM head fused) <- `head_loss`.
"""

from rankjax.losses.config import default_config, validate_config
from rankjax.losses.registry import SCHEMES, Scheme, StatNeeds, WeightArgs, register, unregister
from rankjax.losses.stats import TokenStats, token_stats
from rankjax.losses.inputs import check_mask, check_targets
from rankjax.losses.reduction import BatchContext, accumulate_aux, batch_context
from rankjax.losses.weighted_loss import token_weights, weighted_loss
from rankjax.losses.fused import linear_token_stats, linear_weighted_loss
from rankjax.losses.head_loss import head_log_prob, head_loss, self_anchored, wants_hidden, whole_batch_context
from rankjax.losses.weights import ranktuner_weight, talr_context

__all__ = [
    "SCHEMES", "Scheme", "StatNeeds", "WeightArgs", "register", "unregister", "default_config", "validate_config",
    "TokenStats", "token_stats", "BatchContext", "accumulate_aux", "batch_context", "check_mask", "check_targets",
    "token_weights", "weighted_loss", "ranktuner_weight", "talr_context", "linear_token_stats",
    "linear_weighted_loss", "head_loss", "head_log_prob", "self_anchored", "wants_hidden", "whole_batch_context",
]
