"""The LM head fused into the loss: per-token statistics of softmax(hidden @ kernel) computed chunk by
chunk over tokens, never materialising the [tokens, V] logits, with a custom VJP that recomputes
each chunk's logits in the backward pass.

Forward: the tokens are split into chunks of `token_chunk`; for each chunk the [chunk, V] logits
are formed (input dtype, float32 accumulation), reduced to the per-token statistics (log p_t,
entropy, rank, expected rank, top-K entropy) and dropped. Backward: only log p_t is
differentiable; with its cotangent c_t, the logits' cotangent is c_t (onehot - softmax), which
is recomputed per chunk and contracted at once into d hidden and d kernel (float32
accumulator). Peak temporary memory is O(token_chunk * V) instead of O(tokens * V).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rankjax.losses.config import expected_rank_options
from rankjax.losses.stats import TokenStats, token_stats
from rankjax.losses.weighted_loss import BatchContext, checked_targets, masked_weights, reduce_loss
from rankjax.losses.weights import topk_entropy_nats


def _chunk_logits(h, kernel):
  return jnp.dot(h, kernel.astype(h.dtype), preferred_element_type=jnp.float32)


def _chunked(x, n_chunks: int, chunk: int):
  pad = n_chunks * chunk - x.shape[0]
  x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape((n_chunks, chunk) + x.shape[1:])


def _forward(hidden, kernel, targets, token_chunk, stats_options, eaft_k):
  n = hidden.shape[0]
  chunk = min(token_chunk, n)
  n_chunks = -(-n // chunk)
  options = dict(stats_options)

  def one(args):
    h, t = args
    z = _chunk_logits(h, kernel)
    stats = token_stats(z, t, **options)
    topk = topk_entropy_nats(z, eaft_k) if eaft_k else None
    return stats, topk

  outs = jax.lax.map(one, (_chunked(hidden, n_chunks, chunk), _chunked(targets, n_chunks, chunk)))
  return jax.tree.map(lambda o: o.reshape(-1)[:n], outs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fused_stats(hidden, kernel, targets, token_chunk, stats_options, eaft_k):
  return _forward(hidden, kernel, targets, token_chunk, stats_options, eaft_k)


def _fused_stats_fwd(hidden, kernel, targets, token_chunk, stats_options, eaft_k):
  out = _forward(hidden, kernel, targets, token_chunk, stats_options, eaft_k)
  return out, (hidden, kernel, targets)


def _fused_stats_bwd(token_chunk, stats_options, eaft_k, residuals, cotangents):
  del stats_options, eaft_k
  hidden, kernel, targets = residuals
  ct_log_prob = cotangents[0].log_prob.astype(jnp.float32)  # the other statistics are not differentiable
  n, v = hidden.shape[0], kernel.shape[1]
  chunk = min(token_chunk, n)
  n_chunks = -(-n // chunk)

  def chunk_grads(h, t, c):
    z = _chunk_logits(h, kernel)
    p = jax.nn.softmax(z, axis=-1)
    g = c[:, None] * (jax.nn.one_hot(t, v, dtype=jnp.float32) - p)  # d log p_t / d z = onehot - softmax
    d_h = jnp.dot(g.astype(h.dtype), kernel.astype(h.dtype).T, preferred_element_type=jnp.float32)
    return d_h.astype(hidden.dtype), jnp.dot(h.T, g.astype(h.dtype), preferred_element_type=jnp.float32)

  def one(d_kernel, args):
    d_h, d_k = chunk_grads(*args)
    return d_kernel + d_k, d_h

  chunks = (_chunked(hidden, n_chunks, chunk), _chunked(targets, n_chunks, chunk),
            _chunked(ct_log_prob, n_chunks, chunk))
  # The first chunk seeds the float32 accumulator, so it carries the right sharding type under shard_map.
  d_h0, d_kernel = chunk_grads(*(x[0] for x in chunks))
  d_kernel, d_hidden = jax.lax.scan(one, d_kernel, tuple(x[1:] for x in chunks))
  d_hidden = jnp.concatenate([d_h0[None], d_hidden], axis=0)
  return d_hidden.reshape(-1, hidden.shape[1])[:n], d_kernel.astype(kernel.dtype), None


_fused_stats.defvjp(_fused_stats_fwd, _fused_stats_bwd)


def _vma(x) -> frozenset:
  """Mesh axes over which `x` varies inside shard_map (the attribute moved between JAX versions)."""
  aval = jax.typeof(x)
  if hasattr(aval, "vma"):
    return frozenset(aval.vma)
  manual = getattr(aval, "manual_axis_type", None)
  return frozenset(getattr(manual, "varying", ()))


def _to_common_vma(*xs):
  """Under `shard_map`, marks every input as varying over the union of the inputs' varying axes.

  A custom VJP must return cotangents typed like its inputs; a replicated kernel meeting
  device-varying hidden states would otherwise get a varying cotangent. Marking it varying
  up front makes JAX insert the psum of its cotangent (the transpose of the cast) itself.
  """
  union = frozenset().union(*(_vma(x) for x in xs))
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
  if hidden.shape[:-1] != targets.shape or kernel.ndim != 2 or kernel.shape[0] != hidden.shape[-1]:
    raise ValueError(f"fused loss: hidden {hidden.shape} must be [..., T, d], kernel {kernel.shape} [d, V] "
                     f"and targets {targets.shape} [..., T]")


def linear_token_stats(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, token_chunk: int = 512,
                       eaft_top_k: int = 0, **stats_options) -> tuple[TokenStats, jax.Array | None]:
  """`token_stats(hidden @ kernel, targets, **stats_options)` without materialising the logits,
  plus the top-K entropy (nats, K = min(eaft_top_k, V); None when eaft_top_k is 0).

  hidden [..., T, d], kernel [d, V], targets [..., T] (valid ids). Only `log_prob` has a
  gradient, w.r.t. both hidden and kernel.
  """
  _check_shapes(hidden, kernel, targets)
  lead = targets.shape
  hidden, kernel, targets = _to_common_vma(hidden, kernel, targets)
  eaft_k = min(int(eaft_top_k), kernel.shape[1]) if eaft_top_k else 0
  options = tuple(sorted(stats_options.items()))
  stats, topk = _fused_stats(hidden.reshape(-1, hidden.shape[-1]), kernel, targets.reshape(-1).astype(jnp.int32),
                             int(token_chunk), options, eaft_k)
  stats = jax.tree.map(lambda o: o.reshape(lead), stats)
  rest = {k: jax.lax.stop_gradient(stats[k]) for k in stats.keys() if k != "log_prob"}
  stats = TokenStats(log_prob=stats.log_prob, **rest)
  return stats, (jax.lax.stop_gradient(topk.reshape(lead)) if eaft_k else None)


def linear_weighted_loss(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, mask: jax.Array, config,
                         axis_name=None, context: BatchContext | None = None) -> tuple[jax.Array, dict]:
  """`weighted_loss(hidden @ kernel, targets, mask, config, axis_name, context)` with the LM head
  fused: same loss, aux and gradients (w.r.t. hidden and kernel), O(config.token_chunk * V)
  temporary memory. See `rankjax.losses.weighted_loss` for the arguments and the result.
  """
  _check_shapes(hidden, kernel, targets)
  targets = checked_targets(targets, mask, kernel.shape[-1], config)
  stats, topk = linear_token_stats(hidden, kernel, targets, config.token_chunk,
                                   config.eaft_top_k if config.name == "eaft" else 0, **expected_rank_options(config))
  w, context = masked_weights(stats, topk, mask, config, kernel.shape[-1], axis_name, context)
  return reduce_loss(stats, w, mask, config, axis_name, context)
