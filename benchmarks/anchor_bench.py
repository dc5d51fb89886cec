"""What the schemes that read a second model cost in the fused loss: asft's KL (the reference's logits formed per token
chunk next to the model's, forward and backward) and psft's ratio (a per-token input), against DFT, timed side by
side on the same inputs, and their compiled temporary memory. The anchor model's own forward pass (one more forward
per micro-step) is not in these numbers: it costs what the model's forward costs.

  python benchmarks/anchor_bench.py                         # N=4096 tokens, V=32768, d=512, 3 repeats
  python benchmarks/anchor_bench.py --n 2048 --v 151936 --d 1024 --repeats 2

Everything printed comes from this one run; the ratios compare methods timed alternately on one machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rankjax import losses  # noqa: E402

METHODS = ("dft", "dft, timed again (noise)", "asft", "psft")


def _config(name: str):
  config = losses.default_config()
  config.name = name.split(",")[0]
  config.diagnostics = False
  return config


def _step(name: str, targets, mask, h_a, w_a, old):
  """jit(grad of the fused loss w.r.t. (hidden, kernel)) of `name`, with its anchor bound in."""
  config = _config(name)
  kwargs = {}
  if config.name == "asft":
    kwargs["anchor"] = (h_a, w_a)
  elif config.name == "psft":
    kwargs["inputs"] = {"anchor_log_prob": old}
  return jax.jit(jax.value_and_grad(
      lambda h, w: losses.linear_weighted_loss(h, w, targets, mask, config, **kwargs)[0], (0, 1)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--n", type=int, default=4096, help="tokens")
  parser.add_argument("--v", type=int, default=32768, help="vocabulary")
  parser.add_argument("--d", type=int, default=512, help="hidden size")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  n, v, d = args.n, args.v, args.d
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  h = jax.random.normal(keys[0], (1, n, d), jnp.bfloat16)
  w = (jax.random.normal(keys[1], (d, v)) / np.sqrt(d)).astype(jnp.bfloat16)
  h_a = (h + 0.1 * jax.random.normal(keys[2], h.shape)).astype(jnp.bfloat16)
  w_a = (w + 0.1 / np.sqrt(d) * jax.random.normal(keys[3], w.shape)).astype(jnp.bfloat16)
  targets = jax.random.randint(keys[4], (1, n), 0, v)
  mask = jnp.ones((1, n), jnp.float32)
  old = losses.head_log_prob((h_a, w_a), targets, mask, _config("dft"))
  steps = {m: _step(m, targets, mask, h_a, w_a, old) for m in METHODS}
  memory = {}
  for m, fn in steps.items():
    compiled = fn.lower(h, w).compile()
    analysis = compiled.memory_analysis()
    memory[m] = getattr(analysis, "temp_size_in_bytes", float("nan")) if analysis is not None else float("nan")
    jax.block_until_ready(fn(h, w))  # warm
  times = {m: [] for m in METHODS}
  for _ in range(args.repeats):  # alternating, so drift of the machine hits every method alike
    for m, fn in steps.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(h, w))
      times[m].append(time.perf_counter() - t0)
  base = statistics.median(times["dft"])
  print(f"fused loss + gradient, N={n} tokens, V={v}, d={d}, bfloat16 inputs, {jax.devices()[0].platform} "
        f"({jax.device_count()} device(s)), median of {args.repeats}:")
  print(f"{'method':>28} {'ms':>9} {'/ dft':>7} {'temporaries MiB':>16}")
  for m in METHODS:
    t = statistics.median(times[m])
    print(f"{m:>28} {1e3 * t:9.1f} {t / base:7.2f} {memory[m] / 2**20:16.1f}")


if __name__ == "__main__":
  main()
