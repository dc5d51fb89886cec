"""Throughput of the SFT data pipeline (tokenize + mask + pack) on GSM8K, next to what a train step consumes.

.venv/bin/python benchmarks/data_bench.py [--batches 200]

Runs on one CPU core (sched_setaffinity) with prefetch off, so the number is the pipeline's
own cost. Prints: pipeline tokens/s (row tokens, padding included, and real tokens), the
packing efficiency (non-pad fraction) at seq_len 512 and 2048 with packing on and off, and
the tokens/s the demo model's jitted train step consumes on this machine, measured in the same
run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from rankjax.data import formatting, pipeline, sources
from rankjax.data.bpe import train_bpe
from rankjax.train.config import with_overrides
from rankjax.train.config import load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(path):
  return load_config_file(path)

def pipeline_rate(records, tok, seq_len, packing, batches, rows=8):
  fmt = formatting.Formatter(tok, "plain", "Question: {prompt}\nAnswer: ")
  pipe = pipeline.SFTPipeline(records, fmt, pipeline.PipelineOptions(seq_len=seq_len, rows_per_host=rows,
                                                                     packing=packing, prefetch=0))
  pipe.next_batch()  # warm-up
  real, t0 = 0, time.perf_counter()
  for _ in range(batches):
    real += int((pipe.next_batch()["segment_ids"] > 0).sum())
  elapsed = time.perf_counter() - t0
  pipe.close()
  total = batches * rows * seq_len
  return total / elapsed, real / elapsed, real / total


def train_step_rate(steps=5):
  """Tokens/s one jitted train step of the demo model consumes (row tokens, all devices)."""
  import jax  # noqa: PLC0415
  from rankjax import models  # noqa: PLC0415
  from rankjax.train import loop  # noqa: PLC0415
  from rankjax.train.optimizer import learning_rate_schedule  # noqa: PLC0415
  from rankjax.train.train_step import make_train_step  # noqa: PLC0415
  config = _config("configs/demo.py")
  model = models.build_model(config.model)
  mesh = models.make_mesh(devices=jax.devices()[:1])
  state = loop.create_state(with_overrides(config, {"init_from": ""}), model, mesh)
  step = jax.jit(make_train_step(model, config.loss, learning_rate_schedule(config.optimizer, 100)))
  b, t = config.data.batch_size, config.data.seq_len
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.integers(3, config.model.vocab_size, (1, b, t)).astype(np.int32),
           "targets": rng.integers(3, config.model.vocab_size, (1, b, t)).astype(np.int32),
           "loss_mask": np.ones((1, b, t), np.float32), "segment_ids": np.ones((1, b, t), np.int32),
           "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (1, b, t)).copy()}
  state, m = step(state, batch)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  return steps * b * t / (time.perf_counter() - t0)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batches", type=int, default=200)
  args = parser.parse_args()
  config = _config("configs/gsm8k_tiny.py")
  with tempfile.TemporaryDirectory() as tfds_dir:
    config = with_overrides(config, {"data.files.tfds_data_dir": tfds_dir})
    t0 = time.perf_counter()
    records = sources.load_records(config.data)
    records = [records[i] for i in range(len(records))]
    prepare = time.perf_counter() - t0
  tok = train_bpe((r["prompt"] + r["response"] for r in records), 2048)
  step_rate = train_step_rate()  # before pinning to one core: the step uses every core
  os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
  print(f"GSM8K train: {len(records)} records (TFDS prepare + read: {prepare:.1f} s); pipeline on 1 core, no prefetch\n")
  print("| seq_len | packing | row tokens/s | real tokens/s | non-pad fraction |")
  print("|---:|---|---:|---:|---:|")
  rates = {}
  for seq_len in (512, 2048):
    for packing in (True, False):
      rows_s, real_s, fill = pipeline_rate(records, tok, seq_len, packing, max(args.batches * 512 // seq_len // 4, 10))
      rates[(seq_len, packing)] = rows_s
      print(f"| {seq_len} | {'on' if packing else 'off'} | {rows_s:,.0f} | {real_s:,.0f} | {fill:.3f} |")
  print(f"\ndemo model train step (configs/demo.py, all cores): {step_rate:,.0f} tokens/s")
  print(f"pipeline (512, packed, 1 core) / train step consumption = {rates[(512, True)] / step_rate:.1f}x")


if __name__ == "__main__":
  main()
