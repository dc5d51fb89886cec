"""The loss on TPU, from compiled programs (no TPU needed; libtpu: pip install -e ".[tpu]"): RankTuner (bound, exact
with the E[R] histogram, exact with the sort) vs cross-entropy, fused (chunked, custom VJP) and dense, forward +
backward of the LM-head loss alone at N tokens, vocabulary V, width d, compiled for one chip of a TPU slice.

Prints XLA's FLOPs and bytes accessed (its cost model, per execution) and the compiled temporaries, with ratios to
fused CE. XLA counts a loop's body once, and the fused loss loops over token chunks, so its FLOPs and bytes come
from a compile of one chunk (N = token_chunk: a loop of one iteration) times N / token_chunk, every part of the
loss being linear in N; its temporaries from the compile at the full N. The fused backward also loops, over
vocabulary slices (`vocab_chunk`), and XLA counts that loop's body once too: the fused rows' FLOPs and bytes
undercount the backward, so compare fused rows with each other (same loops), not with the dense rows or the
analytic count. A hardware-faithful proxy until an accelerator is measured: a compiled program's costs, not its
time.

  python benchmarks/tpu_loss_plan.py                          # v5p, N=8192, V=151936, d=3584, bf16
  python benchmarks/tpu_loss_plan.py --topology v5e-4 --n 4096
  python benchmarks/tpu_loss_plan.py --plans plans/            # also each plan.json's whole-step temporaries
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rankjax.plan import topologies  # noqa: E402

PLAIN = {"diagnostics": False, "histograms": False}
METHODS = {  # name: (fused, loss fields)
    "fused CE": (True, {"name": "sft", **PLAIN}),
    "fused RankTuner bound": (True, {"name": "ranktuner", "form": "bound", **PLAIN}),
    "fused RankTuner exact (histogram)": (True, {"name": "ranktuner", "form": "exact", "expected_rank": "histogram",
                                                 **PLAIN}),
    "fused RankTuner exact (sort)": (True, {"name": "ranktuner", "form": "exact", "expected_rank": "sort", **PLAIN}),
    "dense CE": (False, {"name": "sft", **PLAIN}),
    "dense RankTuner bound": (False, {"name": "ranktuner", "form": "bound", **PLAIN}),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--topology", default="v5p-8", help="a slice of rankjax.plan.topologies (one chip is used)")
  parser.add_argument("--n", type=int, default=8192, help="tokens")
  parser.add_argument("--v", type=int, default=151936, help="vocabulary")
  parser.add_argument("--d", type=int, default=3584, help="hidden width")
  parser.add_argument("--token-chunk", type=int, default=1024)
  parser.add_argument("--plans", default="", help="a folder searched for plan.json files (rankjax.plan output)")
  args = parser.parse_args()

  topology = topologies.get(args.topology)
  devices = topologies.devices(topology)  # sets libtpu's environment before JAX loads it
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: PLC0415

  from rankjax import losses  # noqa: PLC0415
  from rankjax.plan import memory  # noqa: PLC0415

  one_chip = NamedSharding(Mesh(devices[:1], ("x",)), P())

  def shapes(n):
    return [jax.ShapeDtypeStruct((n, args.d), jnp.bfloat16, sharding=one_chip),
            jax.ShapeDtypeStruct((args.d, args.v), jnp.bfloat16, sharding=one_chip),
            jax.ShapeDtypeStruct((n,), jnp.int32, sharding=one_chip),
            jax.ShapeDtypeStruct((n,), jnp.float32, sharding=one_chip)]
  if args.n % args.token_chunk:
    parser.error(f"--n {args.n} must be a multiple of --token-chunk {args.token_chunk}")
  chunks = args.n // args.token_chunk

  def loss_fn(fused: bool, fields: dict):
    config = losses.default_config()
    for k, v in fields.items():
      config[k] = v
    config.token_chunk = args.token_chunk

    def f(h, w, t, m):
      if fused:
        return losses.linear_weighted_loss(h, w, t, m, config)[0]
      return losses.weighted_loss(jnp.dot(h, w, preferred_element_type=jnp.float32), t, m, config)[0]
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))

  print(f"# LM-head loss, forward + backward, compiled for one {devices[0].device_kind} chip ({topology.name}); "
        f"N={args.n}, V={args.v}, d={args.d}, bf16 inputs, token_chunk={args.token_chunk} ({chunks} chunks); "
        f"JAX {jax.__version__}")
  print("Fused rows: FLOPs and bytes = XLA's count for one chunk x the chunk count (the backward's vocabulary-slice "
        "loop still counted once: compare fused rows with each other); temporaries at the full N.\n")
  rows = {}
  for name, (fused, fields) in METHODS.items():
    fn = loss_fn(fused, fields)
    whole = fn.lower(*shapes(args.n)).compile()
    cost = memory.compiled_cost(fn.lower(*shapes(args.token_chunk)).compile()) if fused else None
    scale = chunks if fused else 1
    cost = cost or memory.compiled_cost(whole)
    rows[name] = (cost["flops"] * scale, cost["bytes_accessed"] * scale, memory.compiled_memory(whole)["temporaries"])
  base = rows["fused CE"]
  print("| method | GFLOP | x fused CE | GB accessed | x fused CE | temporaries MiB | x fused CE |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for name, (fl, by, tmp) in rows.items():
    print(f"| {name} | {fl / 1e9:,.1f} | {fl / base[0]:.3f} | {by / 1e9:,.2f} | {by / base[1]:.3f} | "
          f"{tmp / 2 ** 20:,.0f} | {tmp / max(base[2], 1):.3f} |", flush=True)
  analytic = 3 * 2 * args.n * args.d * args.v
  print(f"\nAnalytic LM-head matmul FLOPs (forward + backward, 3 x 2NdV): {analytic / 1e9:,.1f} GFLOP.")

  if args.plans:
    print("\n## Whole train step temporaries per chip (rankjax.plan)\n")
    print("| plan | loss | micro-batch | temporaries GiB | peak GiB | HBM GiB | fits |")
    print("|---|---|---:|---:|---:|---:|---|")
    for path in sorted(glob.glob(os.path.join(args.plans, "**", "plan.json"), recursive=True)):
      with open(path, encoding="utf-8") as f:
        train = json.load(f).get("train") or {}
      if not train:
        continue
      m = train["memory_per_chip_bytes"]
      loss = train["loss"]["name"] + (f" {train['loss']['form']}" if train["loss"]["name"] == "ranktuner" else "")
      print(f"| {os.path.relpath(os.path.dirname(path), args.plans)} | {loss} | {train['batch']['micro_batch']} | "
            f"{memory.gib(m['temporaries']):.2f} | {memory.gib(m['peak']):.2f} | {memory.gib(m['hbm']):.0f} | "
            f"{train['fits']} |")


if __name__ == "__main__":
  main()
