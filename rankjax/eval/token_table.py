"""Per-token statistics and weights of one example, for reading in a notebook or terminal."""

from __future__ import annotations

import html

import jax
import jax.numpy as jnp
import numpy as np

from rankjax import losses
from rankjax.data.formatting import Formatter
from rankjax.data.pipeline import example_batch


def token_table(model, params, formatter: Formatter, record: dict, loss_config, seq_len: int = 256) -> list[dict]:
  """One row per supervised target token of `record` (a canonical record, formatted as training formats it):
  token text, p_t, log p_t (nats), entropy (bits), rank R_t, expected rank E[R_t] and the weight of
  `loss_config` (stop-gradient; a scheme that reads an anchor model is weighed against the model itself,
  `losses.self_anchored`)."""
  tokenizer = formatter.tokenizer
  batch = {k: jnp.asarray(v) for k, v in example_batch([record], formatter, seq_len).items()}
  logits = model.apply({"params": params}, batch["inputs"], positions=batch["positions"],
                       segment_ids=batch["segment_ids"])
  stats = losses.token_stats(logits, batch["targets"])
  weights = losses.token_weights(logits, batch["targets"], batch["loss_mask"], loss_config,
                                 **losses.self_anchored(logits, batch["targets"], batch["loss_mask"], loss_config))
  stats, weights, mask, targets = jax.device_get((stats, weights, batch["loss_mask"], batch["targets"]))
  rows = []
  for t in np.flatnonzero(mask[0] > 0):
    rows.append({"token": tokenizer.decode([int(targets[0, t])], skip_special_tokens=False), "prob": float(np.exp(stats.log_prob[0, t])),
                 "log_prob": float(stats.log_prob[0, t]), "entropy_bits": float(stats.entropy_bits[0, t]),
                 "rank": int(stats.rank[0, t]), "expected_rank": float(stats.expected_rank[0, t]),
                 "weight": float(weights[0, t])})
  return rows


def format_table(rows: list[dict]) -> str:
  """Plain-text table of `token_table` rows."""
  lines = [f"{'token':>12} {'p':>7} {'H bits':>7} {'R':>5} {'E[R]':>8} {'w':>7}"]
  for r in rows:
    lines.append(f"{r['token']!r:>12} {r['prob']:7.3f} {r['entropy_bits']:7.2f} {r['rank']:5d} "
                 f"{r['expected_rank']:8.2f} {r['weight']:7.3f}")
  return "\n".join(lines)


def weights_html(rows: list[dict], vmax: float = 2.0) -> str:
  """The response as HTML, each token shaded by its weight (white 0 -> red at `vmax`); hover shows values."""
  spans = []
  for r in rows:
    a = min(r["weight"] / vmax, 1.0)
    title = f"p={r['prob']:.3f} R={r['rank']} E[R]={r['expected_rank']:.2f} w={r['weight']:.3f}"
    spans.append(f'<span title="{title}" style="background: rgba(220,40,40,{a:.2f})">{html.escape(r["token"])}</span>')
  return '<div style="font-family: monospace; white-space: pre-wrap">' + "".join(spans) + "</div>"
