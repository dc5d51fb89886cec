"""The LM head fused into the loss: per-token statistics of softmax(hidden @ kernel) without ever
materialising the [tokens, V] logits, under a custom VJP.

Forward: tokens in chunks of `token_chunk`; each chunk's [chunk, V] logits are formed (input
dtype, float32 accumulation), reduced to the per-token statistics asked for (log p_t and log p_max
always; entropy, rank, expected rank, top-K entropy only when the weights or the diagnostics need
them, see `rankjax.losses.config.stats_options`) and dropped. Backward: only log p_t is differentiable; with its
cotangent c_t the logits' cotangent is c_t (onehot - softmax). It is recomputed per
(vocabulary slice, token chunk) and contracted at once into d hidden and d kernel, with one
[d, vocab_chunk] float32 accumulator at a time. Peak temporary memory is O(token_chunk * V)
instead of O(tokens * V). With a mask, supervised tokens are moved first and chunks without
any are skipped (no LM-head FLOPs for prompts); rows off the mask are zeroed by a select first,
so NaN or inf hidden states there never reach the gradient. With `vocab_axis_name` the kernel is a
vocabulary shard and the statistics combine across shards (`rankjax.losses.vocab_parallel`).
Inputs (mask values, target ids) follow `rankjax.losses.inputs`. The weights and the reduction are those of the
dense loss (`rankjax.losses.reduction`, shared).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rankjax.losses.config import stats_options as config_stats_options, topk_k
from rankjax.losses.inputs import check_anchor, check_vocab_size, checked_inputs, checked_targets
from rankjax.losses.reduction import BatchContext, masked_weights, reduce_loss
from rankjax.losses.stats import TokenStats, anchor_kl_nats, padded_stats, token_stats
from rankjax.losses.vocab_parallel import sharded_token_stats, sharded_topk_entropy_nats
from rankjax.losses.weights import topk_entropy_nats


def _chunk_logits(h, kernel):
  return jnp.dot(h, kernel.astype(h.dtype), preferred_element_type=jnp.float32)


def _chunked(x, n_chunks: int, chunk: int):
  pad = n_chunks * chunk - x.shape[0]
  x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape((n_chunks, chunk) + x.shape[1:])


def _chunk_count(n: int, token_chunk: int) -> tuple[int, int]:
  chunk = min(token_chunk, n)
  return chunk, -(-n // chunk)


def _zeros_like_outputs(fn, args, like):
  """Zeros shaped like fn(*args), typed (under shard_map) to vary like `like`."""
  shapes = jax.eval_shape(fn, args)
  return jax.tree.map(lambda s: _to_common_vma(jnp.zeros(s.shape, s.dtype), like)[0], shapes)


def _forward(hidden, kernel, targets, active, diagnose, anchor, token_chunk, stats_options, eaft_k, vocab_axis):
  """Per-token outputs (stats, top-K entropy, lse, the anchor's lse or None) of the flat tokens, chunk by chunk;
  `anchor` is None or (anchor hidden [n, d_a], anchor kernel [d_a, V]), whose KL the stats then carry."""
  n = hidden.shape[0]
  chunk, n_chunks = _chunk_count(n, token_chunk)
  full, lean = (dict(o) for o in stats_options)
  anchor_kernel = None if anchor is None else anchor[1]

  def with_anchor(stats, z, lse, h_a):
    if h_a is None:
      return stats, None
    kl, lse_a = anchor_kl_nats(z, lse, _chunk_logits(h_a, anchor_kernel))
    return stats.replace(anchor_kl=kl), lse_a

  def compute_with(options, args):
    h, t, h_a = args
    z = _chunk_logits(h, kernel)
    if vocab_axis is not None:
      stats, lse = sharded_token_stats(z, t, vocab_axis, **options)
      return stats, (sharded_topk_entropy_nats(z, eaft_k, vocab_axis) if eaft_k else None), lse, None
    stats, lse = token_stats(z, t, return_lse=True, **options)
    stats, lse_a = with_anchor(stats, z, lse, h_a)
    return stats, (topk_entropy_nats(z, eaft_k) if eaft_k else None), lse, lse_a

  def compute(args):
    if lean == full:
      return compute_with(full, args)
    # Diagnostics on this step only: the statistics the weights do not need are neutral values otherwise.
    def lean_padded(x):
      stats, topk, lse, lse_a = compute_with(lean, x)
      # the neutral values are constants: typed (under shard_map) to vary like the chunk, as the other branch's
      padded = jax.tree.map(lambda v: _to_common_vma(v, x[0])[0], padded_stats(stats, full))
      return padded, topk, lse, lse_a
    return jax.lax.cond(diagnose, lambda x: compute_with(full, x), lean_padded, args)

  def one(args):
    h, t, a, h_a = args
    if vocab_axis is not None:  # collectives run on every device of the axis: no skipping
      return compute((h, t, h_a))
    # Chunks without a supervised token (sorted to the end by the caller) skip the LM head.
    return jax.lax.cond(jnp.any(a), compute, lambda x: _zeros_like_outputs(compute, x, h), (h, t, h_a))

  anchor_chunks = None if anchor is None else _chunked(anchor[0], n_chunks, chunk)
  outs = jax.lax.map(one, (_chunked(hidden, n_chunks, chunk), _chunked(targets, n_chunks, chunk),
                           _chunked(active, n_chunks, chunk), anchor_chunks))
  return jax.tree.map(lambda o: o.reshape(-1)[:n], outs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10, 11))
def _fused_stats(hidden, kernel, targets, active, diagnose, anchor, token_chunk, stats_options, eaft_k, vocab_chunk,
                 vocab_axis, kernel_grad):
  del kernel_grad
  return _forward(hidden, kernel, targets, active, diagnose, anchor, token_chunk, stats_options, eaft_k,
                  vocab_axis)[:2]


def _fused_stats_fwd(hidden, kernel, targets, active, diagnose, anchor, token_chunk, stats_options, eaft_k,
                     vocab_chunk, vocab_axis, kernel_grad):
  del vocab_chunk, kernel_grad
  stats, topk, lse, lse_a = _forward(hidden, kernel, targets, active, diagnose, anchor, token_chunk, stats_options,
                                     eaft_k, vocab_axis)
  return (stats, topk), (hidden, kernel, targets, active, lse, anchor, lse_a)


def vocab_chunk_size(v: int, target: int) -> int:
  """The largest divisor of V in [target / 4, target]; V itself when there is none, or when
  target is 0 or >= V."""
  if target <= 0 or target >= v:
    return v
  return next((c for c in range(target, max(target // 4, 1) - 1, -1) if v % c == 0), v)


def _fused_stats_bwd(token_chunk, stats_options, eaft_k, vocab_chunk, vocab_axis, kernel_grad, residuals,
                     cotangents):
  """Vocabulary chunks outside, token chunks inside: the float32 accumulator of d kernel is one
  [d, vocab_chunk] slice at a time, and d hidden accumulates in float32 across slices. With a
  sharded vocabulary this device's slices give a partial d hidden, summed over the axis. Without
  `kernel_grad` d kernel is returned as zeros and never computed."""
  del stats_options, eaft_k
  hidden, kernel, targets, active, lse, anchor, lse_a = residuals
  ct_log_prob = cotangents[0].log_prob.astype(jnp.float32)  # of the other statistics, only anchor_kl is
  n, d, v = hidden.shape[0], hidden.shape[1], kernel.shape[1]
  chunk, n_chunks = _chunk_count(n, token_chunk)
  vc = vocab_chunk_size(v, vocab_chunk)
  first_id = 0 if vocab_axis is None else jax.lax.axis_index(vocab_axis) * v
  anchor_parts = None
  if anchor is not None:  # d KL / d z = softmax - p_anchor, scaled by the KL's cotangent
    anchor_parts = (anchor[0], cotangents[0].anchor_kl.astype(jnp.float32), lse_a)
  tokens = tuple(_chunked(x, n_chunks, chunk) for x in (hidden, targets, ct_log_prob, lse, active))
  anchor_tokens = None if anchor is None else tuple(_chunked(x, n_chunks, chunk) for x in anchor_parts)

  def vocab_step(carry, i):
    d_hidden, d_kernel = carry
    w = jax.lax.dynamic_slice_in_dim(kernel, i * vc, vc, axis=1).astype(hidden.dtype)
    w_a = None if anchor is None else jax.lax.dynamic_slice_in_dim(anchor[1], i * vc, vc, axis=1)

    def compute(args):
      h, t, c, l, anchor_args = args
      z = jnp.dot(h, w, preferred_element_type=jnp.float32)
      # d log p_t / d z = onehot - softmax, one elementwise expression (no one-hot or softmax buffer).
      onehot = (jnp.arange(vc, dtype=jnp.int32) + first_id + i * vc)[None, :] == t[:, None]
      softmax = jnp.exp(z - l[:, None])
      g = c[:, None] * (onehot.astype(jnp.float32) - softmax)
      if anchor_args is not None:
        h_a, c_kl, l_a = anchor_args
        p_a = jnp.exp(_chunk_logits(h_a, w_a) - l_a[:, None])
        g = g + c_kl[:, None] * (softmax - p_a)
      g = g.astype(h.dtype)
      dh = jnp.dot(g, w.T, preferred_element_type=jnp.float32)
      if not kernel_grad:  # a placeholder scalar, varying over the mesh axes as h does (shard_map)
        return _to_common_vma(jnp.zeros((), jnp.float32), h)[0], dh
      return jnp.dot(h.T, g, preferred_element_type=jnp.float32), dh

    def token_step(d_w, args):
      h, t, c, l, a, anchor_args = args
      if vocab_axis is not None:
        dw, dh = compute((h, t, c, l, anchor_args))
      else:
        dw, dh = jax.lax.cond(jnp.any(a), compute, lambda x: _zeros_like_outputs(compute, x, h),
                              (h, t, c, l, anchor_args))
      return d_w + dw, dh

    d_w0 = _to_common_vma(jnp.zeros((d, vc) if kernel_grad else (), jnp.float32), hidden, kernel)[0]
    d_w, dh = jax.lax.scan(token_step, d_w0, tokens + (anchor_tokens,))
    if kernel_grad:  # written in place into the carried [d, V] result: no stacked copy to transpose afterwards
      d_kernel = jax.lax.dynamic_update_slice_in_dim(d_kernel, d_w.astype(kernel.dtype), i * vc, axis=1)
    return (d_hidden + dh.reshape(-1, d), d_kernel), None

  d_hidden0, d_kernel0 = _to_common_vma(jnp.zeros((n_chunks * chunk, d), jnp.float32),
                                        jnp.zeros(kernel.shape if kernel_grad else (), kernel.dtype), hidden,
                                        kernel)[:2]
  (d_hidden, d_kernel), _ = jax.lax.scan(vocab_step, (d_hidden0, d_kernel0), jnp.arange(v // vc))
  if vocab_axis is not None:
    d_hidden = jax.lax.psum(d_hidden, vocab_axis)  # each device saw its vocabulary slice only
  if not kernel_grad:
    d_kernel = _to_common_vma(jnp.zeros(kernel.shape, kernel.dtype), hidden, kernel)[0]
  return d_hidden[:n].astype(hidden.dtype), d_kernel, None, None, None, None  # the anchor is constant


_fused_stats.defvjp(_fused_stats_fwd, _fused_stats_bwd)


def _vma(x) -> frozenset:
  """Mesh axes over which `x` varies inside shard_map (the attribute moved between JAX versions)."""
  aval = jax.typeof(x)
  if hasattr(aval, "vma"):
    return frozenset(aval.vma)
  manual = getattr(aval, "manual_axis_type", None)
  return frozenset(getattr(manual, "varying", ()))


def _to_common_vma(*xs, exclude=()):
  """Under `shard_map`, marks every input as varying over the union of the inputs' varying axes.

  A custom VJP must return cotangents typed like its inputs; a replicated kernel meeting
  device-varying hidden states would otherwise get a varying cotangent. Marking it varying
  up front makes JAX insert the psum of its cotangent (the transpose of the cast) itself.
  """
  union = frozenset().union(*(_vma(x) for x in xs)) - frozenset(exclude)
  if not union:
    return xs
  cast = getattr(jax.lax, "pcast", None)
  out = []
  for x in xs:
    missing = tuple(sorted(union - _vma(x)))
    if missing:
      x = cast(x, missing, to="varying") if cast is not None else jax.lax.pvary(x, missing)
    out.append(x)
  return tuple(out)


def _check_shapes(hidden, kernel, targets):
  if (hidden.ndim < 2 or hidden.shape[:-1] != targets.shape or kernel.ndim != 2
      or kernel.shape[0] != hidden.shape[-1]):
    raise ValueError(f"fused loss: hidden {hidden.shape} must be [..., T, d] (at least 2-D), kernel {kernel.shape} "
                     f"[d, V] and targets {targets.shape} [..., T]")
  if targets.size == 0 or kernel.shape[1] == 0:
    raise ValueError(f"fused loss: hidden {hidden.shape}, kernel {kernel.shape} and targets {targets.shape} "
                     "hold no token or no vocabulary")


def linear_token_stats(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, token_chunk: int = 128,
                       eaft_top_k: int = 0, mask: jax.Array | None = None, vocab_chunk: int = 16384,
                       vocab_axis_name=None, compact: bool = True, diagnose=None, lean_options: dict | None = None,
                       kernel_grad: bool = True, anchor=None, **stats_options) -> tuple[TokenStats, jax.Array | None]:
  """`token_stats(hidden @ kernel, targets, **stats_options)` without materialising the logits,
  plus the top-K entropy (nats, K = min(eaft_top_k, V); None when eaft_top_k is 0).

  hidden [..., T, d], kernel [d, V], targets [..., T] (an id outside [0, V) gives log_prob NaN,
  as in `token_stats`). Only `log_prob` has a gradient, w.r.t. both hidden and kernel. With
  `mask` [..., T], positions off the mask get the statistics of zero hidden states (or 0) and
  no gradient, whatever their values (NaN included); with `compact` too, supervised tokens are
  moved to the front (a static-shape permutation) and token chunks holding none are skipped in
  both passes: they cost no LM-head FLOPs.

  `diagnose` (a traced bool scalar) with `lean_options` (`token_stats` flags): the statistics of
  `stats_options` are computed only where `diagnose` is true, those of `lean_options` otherwise, the rest
  then holding neutral values (`padded_stats`); one `lax.cond` per token chunk. Ignored with a sharded
  vocabulary (everything in `stats_options` is computed).

  Passes per token chunk: forward, one [chunk, d] x [d, V] matmul, then over its [chunk, V] logits the
  passes of `token_stats` (max; sum of exp(z - max); the entropy's sum, the rank count and the E[R]
  histogram only when asked for). Backward, per (vocabulary slice, token chunk): the logits recomputed
  (one matmul), the cotangent c_t (onehot - exp(z - lse)) from the saved log-normaliser (one exponential),
  and two matmuls into d hidden and d kernel; no statistic is recomputed.

  With `vocab_axis_name` (inside shard_map), `kernel` is this device's vocabulary slice
  [d, V / P] of the mesh axis of that name and `targets` hold global ids; the statistics are
  those of the whole vocabulary (see `rankjax.losses.vocab_parallel`).

  `kernel_grad=False`: the kernel is frozen (LoRA); its cotangent is zeros and the backward pass skips its matmul.

  `anchor`: None, or an anchor model's head (anchor hidden [..., T, d_a], anchor kernel [d_a, V]), constant: the
  stats then carry `anchor_kl` = KL(p_anchor || p) in nats, differentiable (its logits are formed per chunk in both
  passes, next to the model's: no [tokens, V] array either). Not with `vocab_axis_name`.
  """
  hidden, kernel, targets = jnp.asarray(hidden), jnp.asarray(kernel), jnp.asarray(targets)
  _check_shapes(hidden, kernel, targets)
  lead = targets.shape
  if anchor is not None:
    anchor_hidden, anchor_kernel = (jax.lax.stop_gradient(jnp.asarray(x)) for x in anchor)
    if (anchor_hidden.shape[:-1] != hidden.shape[:-1] or anchor_kernel.ndim != 2
        or anchor_kernel.shape != (anchor_hidden.shape[-1], kernel.shape[1])):
      raise ValueError(f"fused loss: the anchor's hidden {anchor_hidden.shape} and kernel {anchor_kernel.shape} must "
                       f"be [..., T, d_a] and [d_a, V] for hidden {hidden.shape} and kernel {kernel.shape}")
    if vocab_axis_name is not None:
      raise ValueError("fused loss: an anchor's KL (asft) over a vocabulary split across devices is not implemented; "
                       "use a mesh without a tensor axis")
    anchor_hidden = anchor_hidden.reshape(-1, anchor_hidden.shape[-1])
  vocab_axes = () if vocab_axis_name is None else (
      (vocab_axis_name,) if isinstance(vocab_axis_name, str) else tuple(vocab_axis_name))
  # Hidden states and targets stay replicated over the vocabulary axes (their cotangent is
  # psum-ed over those axes in the backward rule); the kernel varies over everything.
  hidden, targets = _to_common_vma(hidden, kernel, targets, exclude=vocab_axes)[::2]
  kernel = _to_common_vma(kernel, hidden)[0]
  vocab_size = kernel.shape[1] * (jax.lax.axis_size(vocab_axis_name) if vocab_axis_name is not None else 1)
  eaft_k = min(int(eaft_top_k), vocab_size) if eaft_top_k else 0
  full = tuple(sorted(stats_options.items()))
  lean = full if diagnose is None or vocab_axis_name is not None else tuple(sorted(
      dict(stats_options, **(lean_options or {})).items()))
  diagnose = jnp.asarray(True if diagnose is None else diagnose, bool)
  flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1).astype(jnp.int32)
  if mask is not None:
    keep = jnp.asarray(mask).reshape(-1) > 0
    # A select, not a product: NaN or inf rows would otherwise reach d kernel as 0 * NaN.
    flat_h = jnp.where(keep[:, None], flat_h, jnp.zeros((), flat_h.dtype))
    if anchor is not None:
      anchor_hidden = jnp.where(keep[:, None], anchor_hidden, jnp.zeros((), anchor_hidden.dtype))
  if mask is None or not compact or vocab_axis_name is not None:
    active = jnp.ones(flat_t.shape, bool)
    order = None
  else:
    active = keep
    order = jnp.argsort(~active, stable=True)  # supervised first
    flat_h, flat_t, active = flat_h[order], flat_t[order], active[order]
    if anchor is not None:
      anchor_hidden = anchor_hidden[order]
  active = _to_common_vma(active, flat_h)[0]
  if anchor is not None:
    anchor = _to_common_vma(anchor_hidden, anchor_kernel, flat_h)[:2]
  vocab_axis = tuple(vocab_axis_name) if isinstance(vocab_axis_name, list) else vocab_axis_name
  stats, topk = _fused_stats(flat_h, kernel, flat_t, active, diagnose, anchor, int(token_chunk), (full, lean), eaft_k,
                             int(vocab_chunk), vocab_axis, bool(kernel_grad))
  if order is not None:
    inverse = jnp.argsort(order)
    stats, topk = jax.tree.map(lambda o: o[inverse], (stats, topk))
  stats = jax.tree.map(lambda o: o.reshape(lead), stats)
  rest = {k: jax.lax.stop_gradient(stats[k]) for k in stats.keys() if k not in ("log_prob", "anchor_kl")}
  stats = TokenStats(log_prob=stats.log_prob, anchor_kl=stats.anchor_kl, **rest)
  return stats, (jax.lax.stop_gradient(topk.reshape(lead)) if eaft_k else None)


def linear_weighted_loss(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, mask: jax.Array, config,
                         axis_name=None, context: BatchContext | None = None,
                         vocab_axis_name=None, diagnose=None, inputs: dict | None = None,
                         kernel_grad: bool = True, anchor=None) -> tuple[jax.Array, dict]:
  """`weighted_loss(hidden @ kernel, targets, mask, config, axis_name, context, diagnose, inputs, anchor)` with the LM head
  fused: same loss, aux and gradients (w.r.t. hidden and kernel), O(config.token_chunk * V)
  temporary memory. See `rankjax.losses.weighted_loss` for the arguments and the result.

  `axis_name`: the mesh axes the tokens are split over. `vocab_axis_name`: the mesh axis the
  kernel's vocabulary dimension is split over (inside shard_map; `kernel` is then the local
  slice and the vocabulary size is its width times the axis size). Gradients across devices:
  see `rankjax.losses.global_reduce`. `kernel_grad=False`: a frozen LM head (LoRA), whose gradient is not computed.
  `anchor`: the anchor model's (hidden, kernel) for schemes that read its KL (`Scheme.anchor_kl`, asft), else None.
  """
  hidden, kernel, targets = jnp.asarray(hidden), jnp.asarray(kernel), jnp.asarray(targets)
  _check_shapes(hidden, kernel, targets)
  vocab_size = kernel.shape[-1]
  if vocab_axis_name is not None:
    vocab_size *= jax.lax.axis_size(vocab_axis_name)
  targets, mask = checked_targets(targets, mask, vocab_size, config)
  check_vocab_size(config, vocab_size, f"kernel {kernel.shape}")
  inputs = checked_inputs(inputs, mask, config)
  check_anchor(anchor, config, "an anchor head (hidden, kernel)")
  stats, topk = linear_token_stats(hidden, kernel, targets, config.token_chunk, topk_k(config), mask=mask,
                                   vocab_chunk=config.vocab_chunk, vocab_axis_name=vocab_axis_name,
                                   compact=config.compact_tokens, diagnose=diagnose,
                                   lean_options=config_stats_options(config, diagnostics=False),
                                   kernel_grad=kernel_grad, anchor=anchor, **config_stats_options(config))
  weighted = masked_weights(stats, topk, mask, config, vocab_size, axis_name, context, inputs)
  return reduce_loss(stats, weighted.weights, mask, config, axis_name, weighted.context, targets=targets,
                     diagnose=diagnose, token_loss=weighted.token_loss)
