"""Time of one jitted train step of the demo model, `sft` vs `ranktuner` (and the other schemes),
measured side by side in one process, alternating, median of several repeats.

  python benchmarks/train_step_bench.py [--steps 10] [--repeats 5] [--schemes sft,ranktuner,...]
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
  parser.add_argument("--schemes", default="sft:plain,sft,ranktuner,ranktuner:plain,ranktuner-bound:plain,dft:plain,"
                      "talr:plain,eaft:plain",
                      help="name[-form][:plain]; ':plain' turns diagnostics off (no E[R] unless the scheme needs it)")
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
    loss_config.diagnostics = variant != "plain"
    fns[scheme] = jax.jit(make_train_step(model, loss_config, schedule))
    states[scheme] = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                                   tx=make_optimizer(config.optimizer, 1000))
    states[scheme], m = fns[scheme](states[scheme], batch)  # compile
    jax.block_until_ready(m)

  times = {s: [] for s in fns}
  for _ in range(args.repeats):
    for scheme, fn in fns.items():
      t0 = time.perf_counter()
      for _ in range(args.steps):
        states[scheme], m = fn(states[scheme], batch)
      jax.block_until_ready(m)
      times[scheme].append((time.perf_counter() - t0) / args.steps)

  tokens = config.data.batch_size * config.data.seq_len
  print(f"demo model: {models.count_params(params):,} params, batch {config.data.batch_size} x {config.data.seq_len} "
        f"tokens, V={config.model.vocab_size}, devices={jax.device_count()} ({jax.devices()[0].platform}); "
        f"median of {args.repeats} alternating repeats of {args.steps} steps")
  base_name = "sft:plain" if "sft:plain" in times else "sft"
  base = statistics.median(times[base_name]) if base_name in times else None
  print(f"{'scheme':<24}{'ms/step':>10}{'tokens/s':>12}{'vs ' + base_name:>14}")
  for scheme, ts in times.items():
    med = statistics.median(ts)
    ratio = f"{med / base:.3f}" if base else "-"
    print(f"{scheme:<24}{med * 1e3:>10.1f}{tokens / med:>12.0f}{ratio:>14}")


if __name__ == "__main__":
  main()
