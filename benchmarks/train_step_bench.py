"""Time of one jitted train step of the demo model, `sft` vs `ranktuner` (and the other schemes),
measured side by side in one process, alternating, median of several repeats.

The loop computes diagnostics and histograms only on the steps whose metrics it reads (`diagnose`, every
log_every-th step): each scheme is timed both ways, on an unlogged step (diagnose=False) and a logged one
(diagnose=True), and the loop's mean step is (log_every - 1) unlogged + 1 logged, over log_every.

A second table times the loop's host pattern on the `sft` step, with a fresh host batch put on the device every
step as in the loop: reading `nonfinite` on the host after every step (a device sync per step, the loop before
issue 9) against the loop's device-side watch, read only on log steps (every --log-every steps).

  python benchmarks/train_step_bench.py [--steps 10] [--repeats 5] [--schemes sft,ranktuner:nohist,...] [--log-every 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np
from flax.training import train_state

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rankjax import models  # noqa: E402
from rankjax.train.optimizer import learning_rate_schedule, make_optimizer  # noqa: E402
from rankjax.train.loop import watch_nonfinite  # noqa: E402
from rankjax.train.train_step import make_train_step  # noqa: E402
from rankjax.train.config import load_config_file  # noqa: E402


def load_demo_config():
  return load_config_file("configs/demo.py")

def synthetic_batch(config, rng):
  b, t, v = config.data.batch_size, config.data.seq_len, config.model.vocab_size
  tokens = rng.integers(3, v, size=(1, b, t + 1)).astype(np.int32)
  mask = np.zeros((1, b, t), np.float32)
  mask[..., t // 3:] = 1.0
  return {"inputs": tokens[..., :-1], "targets": tokens[..., 1:], "loss_mask": mask,
          "segment_ids": np.ones((1, b, t), np.int32),
          "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (1, b, t)).copy()}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--schemes", default="sft,ranktuner,ranktuner-bound,ranktuner:plain,ranktuner-bound:plain,"
                      "dft,talr,eaft",
                      help="name[-form][:variant[+variant]]; variant 'plain' turns diagnostics off (no statistic the "
                      "scheme does not need, even on logged steps), 'nohist' the token histograms (on in training), 'sort' E[R] by sort, 'hist' by histogram")
  parser.add_argument("--log-every", type=int, default=10, help="host sync interval of the loop-pattern table")
  args = parser.parse_args()

  config = load_demo_config()
  model = models.build_model(config.model)
  params = models.init_params(model, jax.random.PRNGKey(0), config.data.seq_len)
  batch = jax.device_put(synthetic_batch(config, np.random.default_rng(0)))
  schedule = learning_rate_schedule(config.optimizer, 1000)
  fns, states = {}, {}
  for scheme in args.schemes.split(","):
    loss_config = config.loss.copy_and_resolve_references()
    spec, _, variant = scheme.partition(":")
    loss_config.name, _, form = spec.partition("-")
    loss_config.form = form or "exact"
    variants = set(variant.split("+")) if variant else set()
    loss_config.diagnostics = "plain" not in variants
    loss_config.histograms = "nohist" not in variants
    if "sort" in variants:
      loss_config.expected_rank = "sort"
    if "hist" in variants:
      loss_config.expected_rank = "histogram"
    fns[scheme] = jax.jit(make_train_step(model, loss_config, schedule))
    states[scheme] = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                                   tx=make_optimizer(config.optimizer, 1000))
    for diagnose in (False, True):
      states[scheme], m = fns[scheme](states[scheme], batch, np.bool_(diagnose))  # compile (once: traced flag)
      jax.block_until_ready(m)

  times = {(s, d): [] for s in fns for d in (False, True)}
  for _ in range(args.repeats):
    for scheme, fn in fns.items():
      for diagnose in (False, True):
        t0 = time.perf_counter()
        for _ in range(args.steps):
          states[scheme], m = fn(states[scheme], batch, np.bool_(diagnose))
        jax.block_until_ready(m)
        times[scheme, diagnose].append((time.perf_counter() - t0) / args.steps)

  tokens = config.data.batch_size * config.data.seq_len
  print(f"demo model: {models.count_params(params):,} params, batch {config.data.batch_size} x {config.data.seq_len} "
        f"tokens, V={config.model.vocab_size}, devices={jax.device_count()} ({jax.devices()[0].platform}); "
        f"median of {args.repeats} alternating repeats of {args.steps} steps; loop mean: 1 logged step in "
        f"{args.log_every}")
  med = {k: statistics.median(v) for k, v in times.items()}
  low = {k: min(v) for k, v in times.items()}
  loop = {s: ((args.log_every - 1) * med[s, False] + med[s, True]) / args.log_every for s in fns}
  loop_low = {s: ((args.log_every - 1) * low[s, False] + low[s, True]) / args.log_every for s in fns}
  base = "sft" if "sft" in fns else next(iter(fns))
  print("medians (and minima) of the repeats; ratios vs the first of --schemes that is 'sft', else the first")
  print(f"{'scheme':<24}{'unlogged ms':>12}{'logged ms':>11}{'loop ms':>9}{'tokens/s':>10}"
        f"{'unlogged ratio':>16}{'loop ratio':>12}{'loop ratio (min)':>18}")
  for scheme in fns:
    print(f"{scheme:<24}{med[scheme, False] * 1e3:>12.1f}{med[scheme, True] * 1e3:>11.1f}{loop[scheme] * 1e3:>9.1f}"
          f"{tokens / loop[scheme]:>10.0f}{med[scheme, False] / med[base, False]:>16.3f}"
          f"{loop[scheme] / loop[base]:>12.3f}{loop_low[scheme] / loop_low[base]:>18.3f}")
  host_sync_table(config, model, params, schedule, args)


def host_sync_table(config, model, params, schedule, args):
  """ms/step of the loop pattern: sync on `nonfinite` every step vs the device-side watch read every log step."""
  loss_config = config.loss.copy_and_resolve_references()
  loss_config.name, loss_config.diagnostics = "sft", False
  step = make_train_step(model, loss_config, schedule)
  every_step = jax.jit(step)
  watched = jax.jit(watch_nonfinite(step))
  host_batches = [synthetic_batch(config, np.random.default_rng(i)) for i in range(4)]
  tx = make_optimizer(config.optimizer, 1000)
  states = {m: train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx) for m in ("sync", "watch")}
  first_bad = jax.numpy.zeros((), jax.numpy.int32)

  def run(mode, n, start):
    nonlocal first_bad
    for i in range(start, start + n):
      batch = jax.device_put(host_batches[i % len(host_batches)])
      if mode == "sync":
        states[mode], metrics = every_step(states[mode], batch)
        assert float(metrics["nonfinite"]) == 0.0  # the per-step host read the loop used to do
      else:
        states[mode], metrics, first_bad = watched(states[mode], batch, first_bad, np.int32(i + 1))
        if (i + 1) % args.log_every == 0:
          assert int(first_bad) == 0
    jax.block_until_ready(states[mode].params)

  n = max(args.steps, args.log_every)
  for mode in states:
    run(mode, 2, 0)  # compile
  times = {m: [] for m in states}
  for r in range(args.repeats):
    for mode in states:
      t0 = time.perf_counter()
      run(mode, n, r * n)
      times[mode].append((time.perf_counter() - t0) / n)
  sync = statistics.median(times["sync"])
  print(f"\nloop host pattern (sft:plain, fresh host batch each step, {n} steps x {args.repeats} repeats):")
  print(f"{'mode':<40}{'ms/step':>10}{'vs sync':>10}")
  for mode, label in (("sync", "host reads nonfinite every step"), ("watch", f"device watch, read every {args.log_every}")):
    med = statistics.median(times[mode])
    print(f"{label:<40}{med * 1e3:>10.1f}{med / sync:>10.3f}")


if __name__ == "__main__":
  main()
