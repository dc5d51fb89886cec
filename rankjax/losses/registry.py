"""The table of loss schemes: a scheme's name -> everything the losses need to know about it.

Every loss (dense `weighted_loss`, fused `linear_weighted_loss`, `head_loss`, the token weights of
evaluation and diagnostics) and the config (`default_config`, `validate_config`, `stats_options`) read
a scheme only through its `Scheme` entry here; none of them dispatches on a scheme's name (the aux's
diagnostics report RankTuner's weight and scale for every run, `rankjax.losses.reduction`). The built-in
entries (sft, dft, talr, eaft, ranktuner, prob_power, asft, psft) are in `rankjax.losses.schemes`.

How to add a scheme (one file, `rankjax/losses/schemes.py`, plus its tests):

1. Write its weight function `weight(args: WeightArgs) -> [..., T] float32`: w_t at every position from
   `args.stats` (log p_t is already stop-gradient), `args.config`, and as needed `args.topk_entropy`,
   `args.batch` (its whole-batch constants) and `args.inputs` (its extra per-token inputs). The result is
   made stop-gradient and masked by the caller. Formulas follow ../shared/spec/ranktuner.md.
2. Add `Scheme(name=..., weight=...)` to `BUILTIN` in schemes.py, with what it needs:
   - `needs`: the statistics it reads beyond log p_t and log p_max (always there): a `StatNeeds`, or a
     function of the config returning one (RankTuner's depend on `loss.form`). Nothing else is computed
     unless diagnostics ask for it.
   - `fields`: its config fields and their defaults ({"eaft_top_k": 20, ...}); `default_config()` gets them.
     Prefix them with the scheme's name; comment their meaning and units next to them.
   - `validate(config)`: raises ConfigError naming the field ("loss config: eaft_top_k=1 must be >= 2");
     `check_choice` helps. Every registered scheme's check runs on every config (a field is valid or not
     whatever the run's scheme).
   - `batch_constants(log_prob, mask, config, axis_name)`: only for weights that depend on the whole global
     batch (TALR's median NLL): a pytree of constants computed once per batch, across devices and
     gradient-accumulation micro-steps (a forward-only pre-pass); `batch_aux` names scalars of it that go
     to the aux.
   - `inputs`: names of extra per-token arrays [..., T] the caller passes (`inputs={"ref_log_prob": ...}`
     to `weighted_loss`, `linear_weighted_loss`, `head_loss`), e.g. psft's old-policy log p_t; positions
     off the mask are zeroed before the weight sees them.
   - `token_loss(log_prob, args)`: a per-token term added to w_t (-log p_t) before the reduction, for
     objectives that are not a reweighted cross-entropy (a KL penalty, a clipped ratio); it may be
     differentiable in `log_prob` and in `args.stats.anchor_kl` (the only differentiable statistics, in the dense
     and the fused path alike).
   - `anchor`: the second model the scheme reads, which the train step runs forward (no gradient) next to the
     trained one: "initial" (a frozen copy of the initial weights; under LoRA the base itself, at no extra memory)
     or "snapshot" (a copy of the trained weights refreshed every `anchor_refresh(config)` optimizer steps and kept
     in the checkpoint); "" for none. The step feeds it as the input "anchor_log_prob" (its log p_t, if the scheme
     declares that input) and, with `anchor_kl`, as an anchor head from which the losses stream
     KL(p_anchor || p) per token into `stats.anchor_kl` (nats; `weighted_loss(..., anchor=logits)`,
     `linear_weighted_loss(..., anchor=(hidden, kernel))`).
   - `min_vocab` / `min_vocab_reason`: the smallest vocabulary its weight is defined at.
3. Test it against a float64 NumPy reference (tests/numpy_reference.py) and fused == dense; the scheme is then
   a method of `rankjax.train.methods` and a `--config.loss.name` value.

A scheme added from outside the package (an experiment, a test) calls `register(Scheme(...))` before building
its config and `unregister(name)` afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Callable, Mapping

import jax

from rankjax.models.errors import ConfigError
from rankjax.losses.stats import TokenStats


@dataclasses.dataclass(frozen=True)
class StatNeeds:
  """The per-token statistics a scheme's weights read beyond log p_t and log p_max (always computed).

  entropy: H_t (bits). rank: R_t. expected_rank: E[R_t] (by `loss.expected_rank`). topk_entropy: K of the
  entropy (nats) of the softmax renormalised over the K largest logits (K = min(K, V)); 0 when not needed.
  """

  entropy: bool = False
  rank: bool = False
  expected_rank: bool = False
  topk_entropy: int = 0


@dataclasses.dataclass(frozen=True)
class WeightArgs:
  """What a scheme's weight function may read (built by the losses, one call per loss).

  stats: the token statistics (`needs` and, with diagnostics, the rest), log_prob stop-gradient, [..., T].
  config: the loss config. vocab_size: V of the whole vocabulary (all shards).
  topk_entropy: nats [..., T] when `needs.topk_entropy`, else None.
  batch: the scheme's `batch_constants` of the whole global batch, None for schemes without.
  inputs: the scheme's extra per-token inputs by name ([..., T], 0 off the mask); empty without.
  """

  stats: TokenStats
  config: Any
  vocab_size: int
  topk_entropy: jax.Array | None = None
  batch: Any = None
  inputs: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)


def _no_check(config) -> None:
  del config


@dataclasses.dataclass(frozen=True)
class Scheme:
  """One loss scheme: see the module docstring for each field's contract."""

  name: str
  weight: Callable[[WeightArgs], jax.Array]
  needs: StatNeeds | Callable[[Any], StatNeeds] = StatNeeds()
  fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  validate: Callable[[Any], None] = _no_check
  batch_constants: Callable[..., Any] | None = None
  batch_aux: Mapping[str, Callable[[Any], jax.Array]] = dataclasses.field(default_factory=dict)
  inputs: tuple[str, ...] = ()
  token_loss: Callable[[jax.Array, WeightArgs], jax.Array] | None = None
  anchor: str = ""
  anchor_kl: bool = False
  anchor_refresh: Callable[[Any], int] | None = None
  min_vocab: int = 1
  min_vocab_reason: str = ""

  def stat_needs(self, config) -> StatNeeds:
    """The statistics this scheme's weights read under `config`."""
    return self.needs(config) if callable(self.needs) else self.needs


# The anchor models a scheme may read (`Scheme.anchor`) and the per-token input holding an anchor's log p_t.
ANCHORS = ("", "initial", "snapshot")
ANCHOR_LOG_PROB = "anchor_log_prob"

_TABLE: dict[str, Scheme] = {}
_BUILTIN: set[str] = set()


class _SchemeNames(Sequence):
  """The registered schemes' names, in registration order; a live view (it follows `register`)."""

  def __getitem__(self, i):
    return tuple(_TABLE)[i]

  def __len__(self):
    return len(_TABLE)

  def __contains__(self, name):
    return isinstance(name, str) and name in _TABLE

  def __repr__(self):
    return repr(tuple(_TABLE))


SCHEMES = _SchemeNames()


def register(scheme: Scheme, builtin: bool = False) -> Scheme:
  """Adds `scheme` to the table; ValueError if its name or one of its config fields is taken. Returns it."""
  if not isinstance(scheme, Scheme):
    raise TypeError(f"loss schemes: register takes a Scheme, got {type(scheme).__name__}")
  if not scheme.name or not scheme.name.isidentifier():
    raise ValueError(f"loss schemes: name {scheme.name!r} must be a non-empty identifier")
  if scheme.name in _TABLE:
    raise ValueError(f"loss schemes: {scheme.name!r} is already registered")
  if scheme.anchor not in ANCHORS:
    raise ValueError(f"loss schemes: {scheme.name!r} has anchor={scheme.anchor!r}, not one of {ANCHORS}")
  if (scheme.anchor_kl or ANCHOR_LOG_PROB in scheme.inputs) and not scheme.anchor:
    raise ValueError(f"loss schemes: {scheme.name!r} reads an anchor model (anchor_kl or the input "
                     f"{ANCHOR_LOG_PROB!r}) but declares anchor=''")
  if (scheme.anchor == "snapshot") != (scheme.anchor_refresh is not None):
    raise ValueError(f"loss schemes: {scheme.name!r}: anchor_refresh is given exactly for anchor='snapshot'")
  for other in _TABLE.values():
    shared = sorted(set(scheme.fields) & set(other.fields))
    if shared:
      raise ValueError(f"loss schemes: {scheme.name!r} declares config fields {shared}, already those of "
                       f"{other.name!r}")
  _TABLE[scheme.name] = scheme
  if builtin:
    _BUILTIN.add(scheme.name)
  return scheme


def unregister(name: str) -> None:
  """Removes a scheme added by `register` (built-in schemes stay); ValueError if it is not registered."""
  if name in _BUILTIN:
    raise ValueError(f"loss schemes: {name!r} is built in and cannot be unregistered")
  if name not in _TABLE:
    raise ValueError(f"loss schemes: {name!r} is not registered; registered: {SCHEMES}")
  del _TABLE[name]


def get(name) -> Scheme:
  """The entry of scheme `name`; ConfigError naming the registered ones if there is none."""
  if name not in SCHEMES:
    raise ConfigError(f"loss config: name={name!r} is not one of {SCHEMES}")
  return _TABLE[name]


def all_schemes() -> tuple[Scheme, ...]:
  """Every registered scheme, in registration order."""
  return tuple(_TABLE.values())


def batch_aux_keys() -> frozenset[str]:
  """The aux keys of every scheme's whole-batch constants (identical on all micro-steps of a batch)."""
  return frozenset(k for s in _TABLE.values() for k in s.batch_aux)


def check_choice(config, field: str, allowed) -> None:
  """Raises ConfigError naming `field` unless config[field] is one of `allowed`."""
  value = config[field]
  if value not in allowed:
    raise ConfigError(f"loss config: {field}={value!r} is not one of {tuple(allowed)}")


def weight_args(stats: TokenStats, config, batch, topk_entropy: jax.Array | None, vocab_size: int,
                inputs: Mapping[str, jax.Array] | None = None) -> WeightArgs:
  """The `WeightArgs` of these statistics (log p_t made stop-gradient) and the rest as `WeightArgs` describes."""
  return WeightArgs(stats=stats.replace(log_prob=jax.lax.stop_gradient(stats.log_prob)), config=config,
                    vocab_size=int(vocab_size), topk_entropy=topk_entropy, batch=batch, inputs=dict(inputs or {}))


def scheme_weight(stats: TokenStats, config, batch, topk_entropy: jax.Array | None, vocab_size: int,
                  inputs: Mapping[str, jax.Array] | None = None) -> jax.Array:
  """Unmasked weight w_t of scheme `config.name` at every position: stop-gradient [..., T] (float32 for the
  built-in schemes). `batch` (the scheme's whole-batch constants, TALR's `TalrContext`), `topk_entropy` (nats,
  EAFT's), `vocab_size` and `inputs` are those of `WeightArgs`."""
  args = weight_args(stats, config, batch, topk_entropy, vocab_size, inputs)
  return jax.lax.stop_gradient(get(config.name).weight(args))
