"""Per-token records of a few training sequences (`loss.dump_tokens`): WORKDIR/token_dumps/step_<N>.jsonl."""

from __future__ import annotations

import json
import os

import numpy as np

from rankjax.losses.reduction import DUMP_PREFIX
from rankjax.rundir import atomic

DUMP_DIR = "token_dumps"
# Fields of a record beyond step/sequence/position/token: units are probabilities, bits and ranks (1 = top).
STATISTICS = ("prob", "entropy_bits", "rank", "expected_rank", "relative_scale", "weight", "anchor_kl")


def split_dump(metrics: dict) -> tuple[dict, dict]:
  """(metrics without the "dump/" keys, {name: array [rows, T]} of those keys)."""
  dump = {k[len(DUMP_PREFIX):]: v for k, v in metrics.items() if k.startswith(DUMP_PREFIX)}
  return {k: v for k, v in metrics.items() if not k.startswith(DUMP_PREFIX)}, dump


def dump_path(workdir: str, step: int) -> str:
  return os.path.join(workdir, DUMP_DIR, f"step_{step:07d}.jsonl")


def token_records(step: int, dump: dict, decode) -> list[dict]:
  """One record per supervised token of the dumped rows: step, sequence (row), position, token_id, token
  (`decode([id])`), prob (p_t), log_prob (nats), entropy_bits (H_t, bits), rank (R_t), expected_rank (E[R_t]),
  relative_scale (RankTuner's S_t), weight (w_t of the run's scheme), anchor_kl (asft's KL(p_ref || p), nats); a
  statistic the run did not compute is absent."""
  mask = np.asarray(dump["mask"]) > 0
  targets = np.asarray(dump["target"])
  present = [s for s in STATISTICS if s in dump]
  values = {s: np.asarray(dump[s], np.float64) for s in present}
  records = []
  for row, pos in zip(*np.nonzero(mask)):
    token_id = int(targets[row, pos])
    rec = {"step": int(step), "sequence": int(row), "position": int(pos), "token_id": token_id,
           "token": decode([token_id])}
    for s in present:
      v = float(values[s][row, pos])
      rec[s] = int(round(v)) if s == "rank" else v
    if "prob" in rec:
      rec["log_prob"] = float(np.log(max(rec["prob"], 1e-45)))
    records.append(rec)
  return records


def write_token_dump(workdir: str, step: int, dump: dict, decode) -> str:
  """Writes `token_records` to WORKDIR/token_dumps/step_<N>.jsonl (renamed into place); returns the path."""
  path = dump_path(workdir, step)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return atomic.write_lines(path, (json.dumps(rec) + "\n" for rec in token_records(step, dump, decode)))


def read_token_dump(path: str) -> list[dict]:
  """The records of one dump file."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
