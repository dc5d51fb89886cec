"""Model-level cost of a jitted forward+backward (value_and_grad of the mean cross-entropy over the
logits): parameters, compiled memory, median step time, model FLOP/s, and MFU when the device's
peak is known. It measures the demo model and a Qwen2.5-1.5B slice (its real dimensions, fewer
layers) side by side in one process, alternating, and prints a markdown table.

  python benchmarks/model_bench.py                                  # float32, CPU-sized defaults
  python benchmarks/model_bench.py --slice-layers 2 --slice-batch 2 --slice-seq-len 1024 --repeats 5
  python benchmarks/model_bench.py --dtype bfloat16                 # bf16 compute (MFU on GPU/TPU)
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
import optax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rankjax import models
from rankjax.models import flops
from rankjax.models.config import DTYPES
from rankjax.train.config import load_config_file

MiB = 2**20


def load_demo_config():
  """Returns the full ConfigDict of configs/demo.py (its `.model` and `.data` are used here)."""
  return load_config_file("configs/demo.py")

def qwen25_1p5b_slice(num_layers: int):
  """Returns a model config with Qwen2.5-1.5B's dimensions and `num_layers` decoder layers (the full model has 28)."""
  c = models.default_config()
  c.vocab_size, c.hidden_size, c.num_layers, c.mlp_dim = 151936, 1536, num_layers, 8960
  c.num_heads, c.num_kv_heads, c.head_dim = 12, 2, 128
  c.qkv_bias, c.tie_embeddings = True, True
  c.rope_theta, c.norm_eps = 1e6, 1e-6
  if "architecture" in c:
    c.architecture = "qwen2"
  return c


def compiled_step(config, batch: int, seq_len: int, seed: int = 0):
  """Returns (compiled value_and_grad step, its arguments, parameter count, XLA cost dict, memory stats or None)."""
  model = models.build_model(config)
  params = models.init_params(model, jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, config.vocab_size, size=(batch, seq_len + 1)).astype(np.int32)
  args = (params, jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:]))

  def loss(p, ids, targets):
    logits = model.apply({"params": p}, ids).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  compiled = jax.jit(jax.value_and_grad(loss)).lower(*args).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # a list of dicts in some JAX versions
    cost = cost[0] if cost else None
  return compiled, args, models.count_params(params), cost, compiled.memory_analysis()


def fmt_mib(stats, field: str) -> str:
  """Returns `stats.field` in MiB as text, or "-" when XLA gave no memory analysis."""
  value = getattr(stats, field, None) if stats is not None else None
  return "-" if value is None else f"{value / MiB:,.0f}"


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--repeats", type=int, default=3, help="timed repeats per model (median reported), after one warm-up")
  p.add_argument("--min-repeat-s", type=float, default=0.5,
                 help="each repeat runs the step enough times to last about this long (fast models)")
  p.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                 help="compute dtype (parameters stay float32); XLA:CPU has no fast bf16 matmul")
  p.add_argument("--demo-batch", type=int, default=0, help="0: configs/demo.py's data.batch_size")
  p.add_argument("--demo-seq-len", type=int, default=0, help="0: configs/demo.py's data.seq_len")
  p.add_argument("--slice-layers", type=int, default=1, help="decoder layers of the Qwen2.5-1.5B slice (full: 28)")
  p.add_argument("--slice-batch", type=int, default=1)
  p.add_argument("--slice-seq-len", type=int, default=512)
  p.add_argument("--models", default="demo,qwen2.5-1.5b-slice", help="comma-separated subset to run")
  args = p.parse_args()

  demo = load_demo_config()
  candidates = {
      "demo": (demo.model.copy_and_resolve_references(), args.demo_batch or demo.data.batch_size,
               args.demo_seq_len or demo.data.seq_len),
      "qwen2.5-1.5b-slice": (qwen25_1p5b_slice(args.slice_layers), args.slice_batch, args.slice_seq_len),
  }
  device = jax.devices()[0]
  peak = flops.peak_flops_per_device(device, args.dtype)
  print(f"jax {jax.__version__}, {device.platform} ({device.device_kind}), {os.cpu_count()} cores, "
        f"compute {args.dtype}, peak {'unknown: no MFU' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}")

  runs = {}
  for name in args.models.split(","):
    config, batch, seq_len = candidates[name]
    config.dtype, config.param_dtype = args.dtype, "float32"
    t0 = time.perf_counter()
    fn, fn_args, n_params, cost, memory = compiled_step(config, batch, seq_len)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*fn_args))  # warm-up
    steps = max(1, int(args.min_repeat_s / (time.perf_counter() - t0)))
    runs[name] = {"config": config, "batch": batch, "seq_len": seq_len, "fn": fn, "args": fn_args, "params": n_params,
                  "cost": cost, "memory": memory, "compile_s": compile_s, "steps": steps, "times": []}

  for _ in range(args.repeats):  # models alternate within each repeat
    for run in runs.values():
      t0 = time.perf_counter()
      for _ in range(run["steps"]):
        out = run["fn"](*run["args"])
      jax.block_until_ready(out)
      run["times"].append((time.perf_counter() - t0) / run["steps"])

  print(f"\nforward+backward (value_and_grad of mean CE over the logits), median of {args.repeats} alternating repeats\n")
  print("| model | params | batch | model GFLOP/step | XLA GFLOP/step | args MiB | temp MiB | compile s | ms/step "
        "| tokens/s | model GFLOP/s | MFU |")
  print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for name, run in runs.items():
    tokens = run["batch"] * run["seq_len"]
    step_flops = flops.flops_per_token(run["config"], run["seq_len"], training=True) * tokens
    xla = run["cost"].get("flops") if run["cost"] else None
    med = statistics.median(run["times"])
    # One device runs the step, so tokens/s is also tokens/s per device.
    util = "-" if peak is None else f"{100 * flops.mfu(tokens / med, step_flops / tokens, peak):.1f}%"
    print(f"| {name} | {run['params']:,} | {run['batch']}x{run['seq_len']} | {step_flops / 1e9:,.1f} | "
          f"{'-' if xla is None else f'{xla / 1e9:,.1f}'} | {fmt_mib(run['memory'], 'argument_size_in_bytes')} | "
          f"{fmt_mib(run['memory'], 'temp_size_in_bytes')} | {run['compile_s']:.1f} | {med * 1e3:,.1f} | "
          f"{tokens / med:,.0f} | {step_flops / med / 1e9:,.1f} | {util} |")
  print("\nmodel GFLOP/step: rankjax.models.flops, training = 3 x forward matmul FLOPs, causal attention counted at "
        "T/2 keys per query;\nXLA GFLOP/step: XLA's cost analysis of the compiled step (full T x T scores, plus "
        "elementwise ops). args: parameters and inputs; temp: XLA's temporaries (activations, logits, gradients "
        "in flight).\nOne device; MFU only where the device's peak is known (never on CPU).")


if __name__ == "__main__":
  main()
