"""Teacher-forced statistics of every supervised token of a list of examples, with the LM head fused
(`losses.linear_token_stats`: the [tokens, V] logits are never materialised, so V = 152k fits).

Examples are batched by length (rows padded to a multiple of `LENGTH_BUCKET` tokens, so only a few shapes
compile), built by `rankjax.data.pipeline.example_batch` (the training tokenisation and masking, one example
per row), and split over the mesh's data and fsdp axes when there are several devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from rankjax import losses, models
from rankjax.data.pipeline import example_batch

LENGTH_BUCKET = 32
STAT_KEYS = ("log_prob", "entropy_bits", "rank", "expected_rank", "log_prob_max", "topk_entropy_nats")


def stats_options(loss_config) -> dict:
  """Keyword arguments of `linear_token_stats` for E[R_t] ("histogram" or "sort", from `loss_config`)."""
  return {"with_expected_rank": True, "expected_rank": loss_config.expected_rank,
          "bin_width": float(loss_config.histogram_bin_width), "range_nats": float(loss_config.histogram_range)}


def make_score_fn(model, loss_config):
  """Returns jit(fn(params, batch) -> {STAT_KEYS: [b, T]}): log p_t and log p_max (nats), H_t (bits), R_t,
  E[R_t] and the top-K entropy (nats, K = loss_config.eaft_top_k) at every position (garbage off the mask)."""
  def score(params, batch):
    hidden, kernel = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                                 segment_ids=batch["segment_ids"], return_hidden=True)
    stats, topk = losses.linear_token_stats(
        hidden, kernel, batch["targets"], token_chunk=int(loss_config.token_chunk),
        eaft_top_k=int(loss_config.eaft_top_k), mask=batch["loss_mask"], vocab_chunk=int(loss_config.vocab_chunk),
        compact=bool(loss_config.compact_tokens), **stats_options(loss_config))
    return {"log_prob": stats.log_prob, "entropy_bits": stats.entropy_bits, "rank": stats.rank,
            "expected_rank": stats.expected_rank, "log_prob_max": stats.log_prob_max, "topk_entropy_nats": topk}
  return jax.jit(score)


def _batch_rows(batch_size: int, mesh) -> int:
  """Rows per batch: `batch_size` rounded up to a multiple of the mesh's data * fsdp ways."""
  ways = 1 if mesh is None else int(np.prod([mesh.shape[a] for a in models.sharding.BATCH_AXES if a in mesh.shape]))
  return -(-batch_size // ways) * ways


def _rows(examples, order, rows: int) -> dict:
  """The batch of examples[order] (one per row, padded with empty rows to `rows`), as numpy arrays [rows, T]."""
  ids = {i: examples[i].prompt + examples[i].noisy for i in order}
  seq_len = -(-(max(len(v) for v in ids.values()) - 1) // LENGTH_BUCKET) * LENGTH_BUCKET
  pairs = {i: (examples[i].prompt, examples[i].noisy) for i in order}
  batch = example_batch([{"index": int(i)} for i in order], lambda r: pairs[r["index"]], seq_len)
  pad = rows - len(order)
  return {k: np.pad(v, ((0, pad), (0, 0))) for k, v in batch.items()}


def score_examples(model, params, examples, loss_config, mesh=None, batch_size: int = 32,
                   progress: bool = False) -> dict[str, np.ndarray]:
  """Scores every supervised token of `examples` (`NoisyExample`s, their noisy responses) under `params`.

  Returns flat numpy arrays over the pool of supervised tokens, in (example, position) order: example and
  position (index in the example's supervised sequence, int32), token (the target id), is_noise (bool),
  and STAT_KEYS: log_prob, log_prob_max (nats), entropy_bits (bits), rank (int32), expected_rank,
  topk_entropy_nats (nats).
  """
  lengths = np.asarray([len(e.noisy) for e in examples])
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  n = int(offsets[-1])
  out = {k: np.zeros(n, np.int32 if k == "rank" else np.float32) for k in STAT_KEYS}
  out["example"] = np.repeat(np.arange(len(examples), dtype=np.int32), lengths)
  out["position"] = (np.arange(n) - np.repeat(offsets[:-1], lengths)).astype(np.int32)
  out["token"] = np.concatenate([np.asarray(e.noisy, np.int32) for e in examples])
  out["is_noise"] = np.zeros(n, bool)
  for i, e in enumerate(examples):
    out["is_noise"][offsets[i] + np.asarray(e.positions, np.int64)] = True
  rows = _batch_rows(batch_size, mesh)
  sharding = None if mesh is None or mesh.size == 1 else models.sharding.batch_sharding(mesh, ndim=2, batch_axis=0)
  score = make_score_fn(model, loss_config)
  order = np.argsort(-lengths, kind="stable")  # similar lengths together: little padding, few shapes
  for start in tqdm.tqdm(range(0, len(order), rows), unit="batch", disable=not progress, dynamic_ncols=True,
                         desc="scoring"):
    chunk = order[start:start + rows]
    batch = _rows(examples, chunk, rows)
    on_device = jax.device_put({k: jnp.asarray(v) for k, v in batch.items()}, sharding) if sharding else batch
    result = jax.device_get(score(params, on_device))
    mask = batch["loss_mask"][:len(chunk)] > 0
    for r, i in enumerate(chunk):
      got = int(mask[r].sum())
      if got != lengths[i]:
        raise AssertionError(f"noise diagnostic: example {i} has {got} supervised tokens, expected {lengths[i]}")
      for k in STAT_KEYS:
        out[k][offsets[i]:offsets[i + 1]] = result[k][r][mask[r]]
      if not np.array_equal(batch["targets"][r][mask[r]], out["token"][offsets[i]:offsets[i + 1]]):
        raise AssertionError(f"noise diagnostic: example {i}'s supervised targets are not its noisy response")
  return out
