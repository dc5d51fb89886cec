"""Configuration of the token-weighting losses, and its validation.

The config holds the fields every scheme shares (below) plus those of each registered scheme
(`rankjax.losses.schemes`: `eaft_top_k`, `talr_min_tau`, RankTuner's `form`, `base`, `bound_floor`, ...).
"""

from __future__ import annotations

import ml_collections

from rankjax.models.errors import ConfigError
# `schemes` registers the built-in entries of the table that `registry` holds.
from rankjax.losses import registry, schemes  # noqa: F401
from rankjax.losses.registry import SCHEMES  # noqa: F401 (re-exported: the names of the table)

EXPECTED_RANK_METHODS = ("sort", "histogram")


def _common_config() -> ml_collections.ConfigDict:
  """The fields of every loss config, whatever the scheme."""
  config = ml_collections.ConfigDict()
  config.name = "ranktuner"  # one of SCHEMES
  # How E[R_t] is computed: "histogram" (O(V), relative error < bin_width / 2, certified
  # interval) or "sort" (exact, O(V log V)).
  config.expected_rank = "histogram"
  config.histogram_bin_width = 0.01  # nats
  # Nats below the max logit covered by bins of histogram_bin_width (at most 2 ln V + 16, below which no token
  # can matter); lower tokens share the tail bin.
  config.histogram_range = 40.0
  # Compute every statistic (incl. E[R_t] and the RankTuner weight) for the aux dashboard even when
  # the scheme does not need it. Training does so only on the steps whose metrics it logs (the
  # `diagnose` flag of the losses); other steps compute what the weights need (`stats_options`).
  config.diagnostics = True
  # Histograms of w_t, p_t, H_t, R_t, E[R_t] and S_t (those computed) over the supervised tokens in
  # the aux ("hist/<statistic>/counts" etc., `rankjax.losses.token_histograms`): training turns them on
  # (quantiles to metrics.jsonl, histograms to TensorBoard, computed on log steps only).
  config.histograms = False
  # Every `dump_tokens` optimizer steps (0: never), the loop writes per-token records (token, p_t,
  # H_t, R_t, E[R_t], S_t, w_t) of the first `dump_sequences` sequences of the step's batch to
  # WORKDIR/token_dumps/step_<N>.jsonl; the aux then carries those rows ("dump/...").
  config.dump_tokens = 0
  config.dump_sequences = 2
  # Fused LM-head loss (`linear_weighted_loss`, used by training when `fused`): the [tokens, V]
  # logits are never materialised; `token_chunk` tokens' logits exist at a time.
  config.fused = True
  config.token_chunk = 128
  # Move supervised tokens to the front and skip token chunks without any (no LM-head FLOPs
  # for prompt tokens); off only to measure what it saves.
  config.compact_tokens = True
  # Backward pass: vocabulary slice per float32 d-kernel accumulator (a divisor of V is used; 0: all V).
  config.vocab_chunk = 16384
  return config


def default_config() -> ml_collections.ConfigDict:
  """Returns the loss config: RankTuner, exact form, probability base (the paper's math recipe), with the
  fields of every registered scheme at their defaults."""
  config = _common_config()
  for scheme in registry.all_schemes():
    for field, value in scheme.fields.items():
      if field in config:
        raise ValueError(f"loss scheme {scheme.name!r}: config field {field!r} is already a loss config field")
      config[field] = value
  return config


def validate_config(config) -> None:
  """Raises ConfigError naming the field if `config` is not a valid loss config."""
  missing = [k for k in default_config().keys() if k not in config]
  if missing:
    raise ConfigError(f"loss config: missing fields {missing}; start from rankjax.losses.default_config()")
  registry.get(config.name)
  registry.check_choice(config, "expected_rank", EXPECTED_RANK_METHODS)
  for scheme in registry.all_schemes():
    scheme.validate(config)
  if not 0 < float(config.histogram_bin_width) <= 1.0:
    raise ConfigError(f"loss config: histogram_bin_width={config.histogram_bin_width} must be in (0, 1] nats")
  if not float(config.histogram_range) >= 10 * float(config.histogram_bin_width):
    raise ConfigError(f"loss config: histogram_range={config.histogram_range} must cover at least 10 bins")
  if int(config.vocab_chunk) < 0:
    raise ConfigError(f"loss config: vocab_chunk={config.vocab_chunk} must be >= 0 (0: the whole vocabulary)")
  if int(config.token_chunk) < 1:
    raise ConfigError(f"loss config: token_chunk={config.token_chunk} must be >= 1")
  if int(config.dump_tokens) < 0:
    raise ConfigError(f"loss config: dump_tokens={config.dump_tokens} must be >= 0 (every N steps; 0: off)")
  if int(config.dump_sequences) < 1:
    raise ConfigError(f"loss config: dump_sequences={config.dump_sequences} must be >= 1")


def stats_options(config, diagnostics: bool | None = None) -> dict:
  """Keyword arguments of `token_stats` under `config`: only the statistics the weights need (the scheme's
  `needs`, e.g. RankTuner exact R_t and E[R_t], bound H_t and R_t; log p_t and log p_max always), or all of
  them with diagnostics (`diagnostics` overrides `config.diagnostics`). The top-K entropy is `topk_k`'s."""
  diagnose = bool(config.diagnostics) if diagnostics is None else bool(diagnostics)
  needs = registry.get(config.name).stat_needs(config)
  return {"with_expected_rank": diagnose or needs.expected_rank,
          "with_entropy": diagnose or needs.entropy,
          "with_rank": diagnose or needs.rank,
          "expected_rank": config.expected_rank,
          "bin_width": float(config.histogram_bin_width), "range_nats": float(config.histogram_range)}


def topk_k(config) -> int:
  """K of the top-K entropy the weights of `config.name` read (EAFT's `eaft_top_k`); 0 when none."""
  return int(registry.get(config.name).stat_needs(config).topk_entropy)


def needs_batch_log_probs(config) -> bool:
  """Whether the weights depend on the whole batch's log p_t (TALR's median and normaliser), which
  gradient accumulation computes in a forward-only pre-pass over all micro-steps."""
  return registry.get(config.name).batch_constants is not None
