"""The jit-able train step: gradient accumulation over micro-steps with global-batch token normalisation."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state
from jax.sharding import PartitionSpec as P

from rankjax import losses
from rankjax.losses import registry as loss_registry
from rankjax.losses import token_histograms
from rankjax.models import lora, quantized
from rankjax.models import params as model_params
from rankjax.models.sharding import BATCH_AXES, activation_sharding

BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")


class RunState(train_state.TrainState):
  """flax's TrainState plus `anchor_params`: the old-policy snapshot of a scheme with `anchor="snapshot"` (psft),
  shaped and sharded like `params` and checkpointed with them; None for every other scheme (the state's pytree is
  then flax's own, so checkpoints of either read the same)."""

  anchor_params: Any = struct.field(pytree_node=True, default=None)


def model_logits(model, params, micro: dict, return_hidden: bool = False, dropout_key=None):
  """Logits [b, T, V] of one micro-batch, or (hidden [b, T, d], LM-head kernel [d, V]); `dropout_key` (with LoRA
  dropout) draws the adapters' dropout masks."""
  rngs = None if dropout_key is None else {"dropout": dropout_key}
  return model.apply(quantized.variables(params), micro["inputs"], positions=micro["positions"],
                     segment_ids=micro["segment_ids"], return_hidden=return_hidden, rngs=rngs)


def _local_loss_axes(mesh, loss_config, fused: bool, micro_batch: int):
  """The batch axes of `mesh` over which the fused loss runs per device (`jax.shard_map`: each device its own
  rows' token chunks, the LM head gathered once, d kernel summed once), or None for XLA's own partitioning: no
  mesh, the dense loss, a vocabulary split over "tensor", token dumps (they show the global batch's first rows), a
  micro-batch the batch axes do not divide, or no batch axis of size > 1.

  Why: left to XLA, the chunk loop over the flattened tokens of an FSDP-sharded batch ran replicated, each chip
  all-reducing every chunk's [chunk, V] float32 logits (`python -m rankjax.plan`: 600 GiB per step and chip for
  Qwen2.5-7B on v5p-8)."""
  if mesh is None or not fused or loss_config.dump_tokens or mesh.shape.get("tensor", 1) > 1:
    return None
  axes = tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1)
  ways = 1
  for a in axes:
    ways *= mesh.shape[a]
  return axes if axes and micro_batch % ways == 0 else None


def make_train_step(model, loss_config, schedule: optax.Schedule, mesh=None, dropout_seed: int = 0):
  """Returns step(state, batch, diagnose=None, frozen=None, anchor=None) -> (state, metrics).

  With LoRA (`model.lora`), `state.params` holds the adapters alone and `frozen` the base parameters: only the
  adapters are differentiated (the base's gradient is never formed) and updated. LoRA dropout draws its masks
  from (dropout_seed, step, micro-step); the forward-only pre-pass of whole-batch statistics runs without it.

  `batch` holds arrays [A, b, T] (A accumulation micro-steps of b sequences). The
  gradient is that of the loss over all A*b sequences: every micro-step divides by the
  supervised-token count of the whole batch, and whole-batch statistics of the weights come
  from a forward-only pre-pass (`losses.whole_batch_context`). A step whose loss, gradient or
  updated parameters are not finite (e.g. a target id outside the vocabulary on a supervised
  position) leaves the state unchanged and reports `nonfinite = 1`. A batch without any supervised token leaves
  params and optimizer state (moments and count) unchanged, advances `state.step` and reports `empty_batch = 1`.

  With `loss_config.histograms`, metrics also hold the whole batch's histograms ("hist/<statistic>/...", arrays)
  and, from them, quantiles such as "weight/q50" (scalars); with `loss_config.dump_tokens`, the first micro-step's
  first rows ("dump/...", arrays [rows, T]).

  `diagnose` (a bool scalar, traced under jit): where false, the diagnostics-only statistics
  (`loss_config.diagnostics`) and the histograms are skipped (`lax.cond`) and their metrics are not
  meaningful; the update is the same. The loop sets it on steps whose metrics it reads (log and dump steps).
  None computes everything on every step.

  Schemes that read an anchor model (`Scheme.anchor`) get its head from a forward pass per micro-step, without
  gradient or dropout: "initial" (asft) reads `anchor`, the initial parameters (full fine-tuning; a LoRA run's anchor
  is its base, `frozen`, and `anchor` stays None); "snapshot" (psft) reads `state.anchor_params` (a `RunState`;
  adapters only under LoRA), which the step replaces by the updated params after every `Scheme.anchor_refresh`-th
  optimizer step.

  `mesh`: the step's activations are constrained to it (`models.sharding.activation_sharding`: rows over the
  batch axes) and each micro-step's gradient to the parameters' shardings (FSDP: a reduce-scatter per micro-step,
  where XLA left alone all-reduced whole gradients); None leaves their sharding to XLA.
  """
  losses.validate_config(loss_config)
  return_hidden = losses.wants_hidden(loss_config)
  grad_shardings = None if mesh is None else model_params.model_shardings(model, mesh)
  if grad_shardings is not None and model.lora is not None:
    grad_shardings = lora.split(grad_shardings)[1]
  dropout = model.lora is not None and model.lora.dropout > 0
  kernel_grad = model.lora is None  # the LM head never takes adapters: frozen under LoRA
  scheme = loss_registry.get(loss_config.name)
  anchor_every = scheme.anchor_refresh(loss_config) if scheme.anchor == "snapshot" else 0

  def like_params(grads):
    if grad_shardings is None:
      return grads
    return jax.tree.map(jax.lax.with_sharding_constraint, grads, grad_shardings)

  def head(params, micro, frozen=None, dropout_key=None):
    full = params if frozen is None else lora.combine(frozen, params)
    return model_logits(model, full, micro, return_hidden, dropout_key)

  def anchor_parts(anchor_out, micro) -> tuple[dict | None, Any]:
    """(the scheme's anchor inputs, its anchor head for the KL) from the anchor model's head output."""
    if anchor_out is None:
      return None, None
    inputs = None
    if loss_registry.ANCHOR_LOG_PROB in scheme.inputs:
      inputs = {loss_registry.ANCHOR_LOG_PROB: losses.head_log_prob(anchor_out, micro["targets"], micro["loss_mask"],
                                                                    loss_config)}
    return inputs, (anchor_out if scheme.anchor_kl else None)

  def loss_of_head(head_out, micro, context, diagnose, anchor_out=None):
    axes = _local_loss_axes(mesh, loss_config, return_hidden, micro["targets"].shape[0])
    if axes is None:
      inputs, anchor_head = anchor_parts(anchor_out, micro)
      return losses.head_loss(head_out, micro["targets"], micro["loss_mask"], loss_config, context=context,
                              diagnose=diagnose, kernel_grad=kernel_grad, inputs=inputs, anchor=anchor_head)

    def local(hidden, kernel, targets, mask, context, diagnose, anchor_out):
      # The anchor's statistics per device too: left to XLA, psft's old-policy log-probs ran the chunk loop
      # replicated and all-reduced every chunk's logits (Qwen2.5-Math-7B on v5p-8, `python -m rankjax.plan`: 368 GiB
      # of all-reduce per step and chip; 67 here, as for every other scheme).
      inputs, anchor_head = anchor_parts(anchor_out, {"targets": targets, "loss_mask": mask})
      loss, aux = losses.head_loss((hidden, kernel), targets, mask, loss_config, context=context, diagnose=diagnose,
                                   axis_name=axes, kernel_grad=kernel_grad, inputs=inputs, anchor=anchor_head)
      # `loss` is the global-batch loss in value and this device's share in gradient (`reduction.reduce_loss`):
      # psum makes it replicated with the right gradient, but ways x the value, so the logged loss is aux's own
      # (the same global value on every device; pmean only marks it replicated). The other aux are global.
      aux = dict(aux, loss=jax.lax.pmean(aux["loss"], axes)) if "loss" in aux else aux
      return jax.lax.psum(loss, axes), aux
    rows = P(axes)
    anchor_spec = None if anchor_out is None else (rows, P())
    return jax.shard_map(local, mesh=mesh, in_specs=(rows, P(), rows, rows, P(), P(), anchor_spec),
                         out_specs=P())(*head_out, micro["targets"], micro["loss_mask"], context, diagnose, anchor_out)

  def anchor_params_of(state, frozen, anchor):
    """The anchor model's parameters in `head`'s form (adapters alone under LoRA), or None without an anchor."""
    if scheme.anchor == "snapshot":
      if getattr(state, "anchor_params", None) is None:
        raise ValueError(f"train step: scheme {scheme.name!r} needs its old-policy snapshot in the state "
                         "(a RunState with anchor_params; rankjax.train.state.create_state makes it)")
      return state.anchor_params
    if scheme.anchor == "initial":
      if model.lora is not None:  # B = 0 adapters: exactly the base
        return jax.tree.map(jnp.zeros_like, state.params)
      if anchor is None:
        raise ValueError(f"train step: scheme {scheme.name!r} needs the initial parameters (anchor=...)")
      return anchor
    return None

  def step(state: train_state.TrainState, batch: dict, diagnose=None, frozen=None, anchor=None):
    if (frozen is None) != (model.lora is None):
      raise ValueError("train step: a LoRA model needs its frozen base parameters (frozen=...), and only a LoRA "
                       "model takes them")
    if anchor is not None and not (scheme.anchor == "initial" and model.lora is None):
      raise ValueError(f"train step: anchor=... is the initial parameters of a full fine-tuning run of a scheme with "
                       f"anchor='initial' (asft); scheme {scheme.name!r}"
                       f"{' under LoRA anchors on its base' if model.lora is not None else ' reads none'}")
    with activation_sharding(mesh):
      return _step(state, batch, diagnose, frozen, anchor)

  def _step(state: train_state.TrainState, batch: dict, diagnose=None, frozen=None, anchor=None):
    def dropout_key(index):
      if not dropout:
        return None
      return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(dropout_seed), state.step), index)

    anchor_params = anchor_params_of(state, frozen, anchor)

    def micro_loss(params, micro, context, index, anchor_out):
      return loss_of_head(head(params, micro, frozen, dropout_key(index)), micro, context, diagnose, anchor_out)

    batch = {k: batch[k] for k in BATCH_KEYS}
    params = state.params
    context = losses.whole_batch_context(lambda micro: head(params, micro, frozen), batch, loss_config)
    value_and_grad = jax.value_and_grad(micro_loss, has_aux=True)  # argument 0: the adapters alone under LoRA

    def grad_fn(params, micro, context, index):
      if anchor_params is None:
        return value_and_grad(params, micro, context, index, None)
      # The anchor model's forward pass, outside differentiation. In full fine-tuning it finishes before the model's
      # own starts: left to overlap, XLA:TPU kept the two models' temporaries alive together (Qwen2.5-Math-7B on
      # v5p-8, `python -m rankjax.plan`: asft temporaries 37.00 GiB without the barrier, 24.98 with it; psft 36.00
      # and 24.73). Under LoRA the anchor is the frozen base, whose all-gathers XLA shares with the model's forward
      # only without the barrier (asft LoRA r=64: 19.37 GiB without, 33.18 with).
      anchor_out = head(anchor_params, micro, frozen)
      if model.lora is None:
        anchor_out, params = jax.lax.optimization_barrier((anchor_out, params))
      return value_and_grad(params, micro, context, index, anchor_out)

    first = jax.tree.map(lambda x: x[0], batch)
    (_, aux0), grads0 = grad_fn(params, first, context, 0)
    grads0 = like_params(grads0)

    def body(carry, micro_and_index):
      grads, aux = carry
      micro, index = micro_and_index
      (_, aux_i), grads_i = grad_fn(params, micro, context, index)
      return (jax.tree.map(jnp.add, grads, like_params(grads_i)), losses.accumulate_aux(aux, aux_i)), None

    rest = jax.tree.map(lambda x: x[1:], batch)
    if frozen is not None:
      # Under LoRA, the loop's micro-batches wait for the first micro-step's gradient. Without this tie XLA:TPU
      # moves that gradient's last matmuls (and its all-reduce) after the loop, keeping the first micro-step's
      # activations alive through every later one (Qwen2.5-Math-7B LoRA r=64 on v5p-8, `python -m rankjax.plan`:
      # temporaries 50.45 GiB without it, 18.71 with it). Full fine-tuning does not need it (23.97 with, 23.59
      # without), so it keeps the schedule XLA chooses.
      grads0, rest = jax.lax.optimization_barrier((grads0, rest))
    indices = jnp.arange(1, batch["inputs"].shape[0], dtype=jnp.int32)
    (grads, aux), _ = jax.lax.scan(body, (grads0, aux0), (rest, indices))

    grad_norm = optax.tree.norm(grads)
    new_state = state.apply_gradients(grads=grads)
    finite = (jnp.isfinite(aux["loss"]) & jnp.isfinite(grad_norm)
              & jnp.isfinite(optax.tree.norm(new_state.params)))
    # No supervised token in the whole batch: nothing to learn from, so AdamW must not decay its moments or move
    # the params by momentum; the batch still counts as consumed (state.step advances).
    has_tokens = jnp.any(batch["loss_mask"] > 0)
    applied = jax.tree.map(lambda new, old: jnp.where(finite & has_tokens, new, old), new_state, state)
    new_state = applied.replace(step=jnp.where(finite, new_state.step, state.step))
    if anchor_every:  # the old policy becomes the current one after every anchor_every-th optimizer step
      refresh = (new_state.step != state.step) & (new_state.step % anchor_every == 0)
      new_state = new_state.replace(anchor_params=jax.tree.map(lambda new, old: jnp.where(refresh, new, old),
                                                               new_state.params, state.anchor_params))
    metrics = dict(aux, **token_histograms.quantile_metrics(aux), grad_norm=grad_norm, learning_rate=schedule(state.step),
                   nonfinite=1.0 - finite.astype(jnp.float32), empty_batch=1.0 - has_tokens.astype(jnp.float32))
    return new_state, metrics

  return step
