"""Configuration of the token-weighting losses, and its validation."""

from __future__ import annotations

import ml_collections

from rankjax.errors import ConfigError

SCHEMES = ("sft", "dft", "talr", "eaft", "ranktuner")
FORMS = ("exact", "bound")
BASES = ("prob", "uniform")
EXPECTED_RANK_METHODS = ("sort", "histogram")


def default_config() -> ml_collections.ConfigDict:
  """Returns the loss config: RankTuner, exact form, probability base (the paper's math recipe)."""
  config = ml_collections.ConfigDict()
  config.name = "ranktuner"  # one of SCHEMES
  config.form = "exact"  # RankTuner: "exact" uses E[R_t]; "bound" the sort-free surrogate
  config.base = "prob"  # RankTuner base weight b_t: "prob" (p_t) or "uniform" (1)
  # How E[R_t] is computed: "histogram" (O(V), relative error < bin_width / 2, certified
  # interval) or "sort" (exact, O(V log V)).
  config.expected_rank = "histogram"
  config.histogram_bin_width = 0.01  # nats
  # Nats below the max logit covered by bins of histogram_bin_width (at most 2 ln V + 16, below which no token
  # can matter); lower tokens share the tail bin.
  config.histogram_range = 40.0
  config.eaft_top_k = 20
  config.eaft_alpha = 1.0
  config.talr_min_tau = 1e-3  # floor on TALR's temperature (nats)
  config.talr_normalize = True  # TALR weights rescaled to mean 1 over supervised tokens
  # Bound form: S_t = max(p_t s_t, bound_floor)^(-K_t), so S_t <= 1 / bound_floor (spec section 3; the
  # reference implementation's 1e-6).
  config.bound_floor = 1e-6
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


def _check_choice(config, field, allowed):
  value = config[field]
  if value not in allowed:
    raise ConfigError(f"loss config: {field}={value!r} is not one of {allowed}")


def validate_config(config) -> None:
  """Raises ConfigError naming the field if `config` is not a valid loss config."""
  missing = [k for k in default_config().keys() if k not in config]
  if missing:
    raise ConfigError(f"loss config: missing fields {missing}; start from rankjax.losses.default_config()")
  _check_choice(config, "name", SCHEMES)
  _check_choice(config, "form", FORMS)
  _check_choice(config, "base", BASES)
  _check_choice(config, "expected_rank", EXPECTED_RANK_METHODS)
  if int(config.eaft_top_k) < 2:
    raise ConfigError(f"loss config: eaft_top_k={config.eaft_top_k} must be >= 2 (its entropy is divided by ln K)")
  if not float(config.eaft_alpha) > 0:
    raise ConfigError(f"loss config: eaft_alpha={config.eaft_alpha} must be > 0")
  if not 1e-30 <= float(config.bound_floor) < 1.0:
    raise ConfigError(f"loss config: bound_floor={config.bound_floor} must be in [1e-30, 1) (S_t <= 1 / bound_floor "
                      "must stay finite in float32)")
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
  if not float(config.talr_min_tau) > 0:
    raise ConfigError(f"loss config: talr_min_tau={config.talr_min_tau} must be > 0")


def stats_options(config, diagnostics: bool | None = None) -> dict:
  """Keyword arguments of `token_stats` under `config`: only the statistics the weights need, or all of them
  with diagnostics (`diagnostics` overrides `config.diagnostics`).

  The weights need: sft, dft, talr, eaft nothing beyond log p_t (EAFT's top-K entropy is separate);
  RankTuner exact R_t and E[R_t]; RankTuner bound H_t, R_t and log p_max (always computed: it is free).
  """
  diagnose = bool(config.diagnostics) if diagnostics is None else bool(diagnostics)
  ranktuner = config.name == "ranktuner"
  return {"with_expected_rank": diagnose or (ranktuner and config.form == "exact"),
          "with_entropy": diagnose or (ranktuner and config.form == "bound"),
          "with_rank": diagnose or ranktuner,
          "expected_rank": config.expected_rank,
          "bin_width": float(config.histogram_bin_width), "range_nats": float(config.histogram_range)}


def needs_batch_log_probs(config) -> bool:
  """Whether the weights depend on the whole batch's log p_t (TALR's median and normaliser), which
  gradient accumulation computes in a forward-only pre-pass over all micro-steps."""
  return config.name == "talr"
