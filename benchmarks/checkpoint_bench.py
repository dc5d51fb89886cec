"""Step time with a checkpoint every step: no checkpoint vs synchronous vs asynchronous Orbax writes, measured
side by side in one process (modes alternate within each repeat; median over repeats).

The step is the loop's: jitted, the state donated, a fresh host batch each step; the save is the loop's
`rankjax.train.checkpointing.save` (params + AdamW state + meta) into a fresh directory per mode and repeat,
keeping 2 steps. "sync" blocks until the files are written; "async" returns once the arrays are copied to host
memory, and the next save first waits for the previous one (so with a checkpoint every step the write can hide
behind at most one step).

  python benchmarks/checkpoint_bench.py [--models demo,100m] [--steps 6] [--repeats 3] [--every 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from flax.training import train_state

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rankjax import models  # noqa: E402
from rankjax.train import checkpointing  # noqa: E402
from rankjax.train.config import load_config_file, with_overrides  # noqa: E402
from rankjax.train.optimizer import learning_rate_schedule, make_optimizer  # noqa: E402
from rankjax.train.train_step import make_train_step  # noqa: E402

# A ~110M-parameter llama (GPT-2-small sized), with a batch small enough for a CPU step of about a second.
MODELS = {
    "demo": {},
    "100m": {"model.hidden_size": 768, "model.num_layers": 12, "model.num_heads": 12, "model.num_kv_heads": 12,
             "model.mlp_dim": 3072, "model.vocab_size": 32000, "data.batch_size": 2, "data.seq_len": 32},
}
MODES = ("none", "sync", "async")


def _batch(config, rng):
  b, t, v = config.data.batch_size, config.data.seq_len, config.model.vocab_size
  tokens = rng.integers(3, v, size=(1, b, t + 1)).astype(np.int32)
  return {"inputs": tokens[..., :-1], "targets": tokens[..., 1:], "loss_mask": np.ones((1, b, t), np.float32),
          "segment_ids": np.ones((1, b, t), np.int32),
          "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (1, b, t)).copy()}


def _run(mode, state, step_fn, batch, steps, root, every=1):
  """Seconds per step over `steps` steps with a checkpoint every `every` steps (none: without); returns
  (s/step, state)."""
  manager = None
  if mode != "none":
    directory = tempfile.mkdtemp(dir=root)
    manager = checkpointing.make_manager(directory, keep=2, async_writes=mode == "async")
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = step_fn(state, jax.device_put(batch))
    if manager is not None and (i + 1) % every == 0:
      checkpointing.save(manager, state)  # reads state.step: a host sync, as in the loop's save steps
  jax.block_until_ready(metrics["loss"])
  elapsed = (time.perf_counter() - start) / steps
  if manager is not None:
    checkpointing.close(manager)  # the last write's tail is not counted: training would go on
    shutil.rmtree(directory)
  return elapsed, state


def bench_model(name, steps, repeats, root, every=1):
  config = with_overrides(load_config_file("configs/demo.py"), MODELS[name])
  model = models.build_model(config.model)
  params = models.init_params(model, jax.random.PRNGKey(0), config.data.seq_len)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                        tx=make_optimizer(config.optimizer, 10_000))
  step_fn = jax.jit(make_train_step(model, config.loss, learning_rate_schedule(config.optimizer, 10_000)),
                    donate_argnums=0)
  batch = _batch(config, np.random.default_rng(0))
  state, metrics = step_fn(state, jax.device_put(batch))  # compile
  jax.block_until_ready(metrics["loss"])
  mb = sum(x.nbytes for x in jax.tree.leaves((state.params, state.opt_state))) / 2 ** 20
  times = {m: [] for m in MODES}
  for _ in range(repeats):
    for mode in MODES:
      t, state = _run(mode, state, step_fn, batch, steps, root, every)
      times[mode].append(t)
  med = {m: statistics.median(v) for m, v in times.items()}
  print(f"\n{name}: {n_params:,} params, checkpoint {mb:,.0f} MiB (params + AdamW), batch "
        f"{config.data.batch_size} x {config.data.seq_len}; a checkpoint every {every} step(s); median of {repeats} "
        f"alternating repeats of {steps} steps")
  print(f"{'mode':<8}{'s/step':>10}{'vs none':>10}{'ckpt cost/step':>16}")
  for mode in MODES:
    print(f"{mode:<8}{med[mode]:>10.3f}{med[mode] / med['none']:>10.2f}{med[mode] - med['none']:>15.3f}s")
  print(f"async / sync step time: {med['async'] / med['sync']:.2f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="demo,100m")
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--every", type=int, default=1, help="checkpoint interval in steps")
  parser.add_argument("--dir", default="", help="where checkpoints are written (default: a temporary directory)")
  args = parser.parse_args()
  root = args.dir or tempfile.mkdtemp(prefix="checkpoint_bench")
  print(f"jax {jax.__version__}, devices={jax.device_count()} ({jax.devices()[0].platform}), writing to {root}")
  for name in args.models.split(","):
    bench_model(name, args.steps, args.repeats, root, args.every)


if __name__ == "__main__":
  main()
