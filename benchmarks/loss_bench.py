"""Dense vs fused (chunked, custom-VJP) loss: forward+backward time, compiled temporary memory, and the
accuracy of the histogram E[R]. Everything printed comes from this one run.

  python benchmarks/loss_bench.py                       # times at N=4096, V=32768; memory at all sizes
  python benchmarks/loss_bench.py --time-sizes 4096x32768,8192x151936 --repeats 3
  python benchmarks/loss_bench.py --demo-workdir workdirs/demo   # E[R] accuracy on the demo model's logits too
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rankjax import losses  # noqa: E402
from rankjax.losses import expected_rank as er  # noqa: E402

D = 1536
METHODS = {  # name: (fused, loss fields)
    "dense CE": (False, {"name": "sft", "diagnostics": False}),
    "dense RankTuner (sort)": (False, {"name": "ranktuner", "expected_rank": "sort", "diagnostics": False}),
    "fused CE": (True, {"name": "sft", "diagnostics": False}),
    "fused CE (no compaction)": (True, {"name": "sft", "diagnostics": False, "compact_tokens": False}),
    "fused RankTuner (histogram)": (True, {"name": "ranktuner", "expected_rank": "histogram", "diagnostics": False}),
    "fused RankTuner (sort)": (True, {"name": "ranktuner", "expected_rank": "sort", "diagnostics": False}),
}


def loss_fn(fused: bool, fields: dict, token_chunk: int):
  config = losses.default_config()
  for k, v in fields.items():
    config[k] = v
  config.token_chunk = token_chunk

  def f(h, w, t, m):
    if fused:
      return losses.linear_weighted_loss(h, w, t, m, config)[0]
    return losses.weighted_loss(jnp.dot(h, w, preferred_element_type=jnp.float32), t, m, config)[0]
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))


def inputs(n, v, dtype=jnp.bfloat16, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  h = jax.random.normal(k1, (n, D), jnp.float32).astype(dtype)
  w = (jax.random.normal(k2, (D, v), jnp.float32) / np.sqrt(D) * 4).astype(dtype)
  t = jax.random.randint(k3, (n,), 0, v)
  m = (jnp.arange(n) % 2 == 0).astype(jnp.float32)  # 50% supervised
  return h, w, t, m


def temp_bytes(fn, args) -> int:
  shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
  return int(fn.lower(*shapes).compile().memory_analysis().temp_size_in_bytes)


def memory_table(sizes, token_chunk, dtype):
  print(f"\n## compiled temporary memory, forward+backward ({jnp.dtype(dtype).name} inputs, d={D}, "
        f"token_chunk={token_chunk})")
  print(f"{'N':>6} {'V':>7}  " + "".join(f"{m:>30}" for m in METHODS) + f"{'fused RT(hist)/dense CE':>26}")
  for n, v in sizes:
    args = inputs(n, v, dtype)
    row = {name: temp_bytes(loss_fn(fused, fields, token_chunk), args) for name, (fused, fields) in METHODS.items()}
    print(f"{n:>6} {v:>7}  " + "".join(f"{row[m] / 2**20:>27.0f}MiB" for m in METHODS)
          + f"{row['fused RankTuner (histogram)'] / row['dense CE']:>26.3f}")


def time_table(sizes, repeats, token_chunk, dtype):
  print(f"\n## forward+backward time, median of {repeats} alternating runs ({jnp.dtype(dtype).name} inputs, d={D}, "
        f"50% mask)")
  for n, v in sizes:
    args = inputs(n, v, dtype)
    fns = {name: loss_fn(fused, fields, token_chunk) for name, (fused, fields) in METHODS.items()}
    for fn in fns.values():
      jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    for _ in range(repeats):
      for name, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"N={n} V={v}: " + ", ".join(f"{k} {t:.2f}s" for k, t in med.items()))
    print(f"  fused RankTuner (histogram) / fused CE = {med['fused RankTuner (histogram)'] / med['fused CE']:.3f}; "
          f"fused RankTuner (sort) / fused CE = {med['fused RankTuner (sort)'] / med['fused CE']:.3f}; "
          f"fused CE / dense CE = {med['fused CE'] / med['dense CE']:.3f}; "
          f"compaction at 50% mask: fused CE / fused CE (no compaction) = "
          f"{med['fused CE'] / med['fused CE (no compaction)']:.3f}")


def accuracy_rows(name, z, bin_width, range_nats):
  z64 = np.asarray(z, np.float64)
  mx = z64.max(-1, keepdims=True)
  lse = np.log(np.exp(z64 - mx).sum(-1)) + mx[:, 0]
  desc = -np.sort(-z64, axis=-1)
  exact = (np.exp(desc - lse[:, None]) * np.arange(1, z64.shape[1] + 1)).sum(-1)
  est, lo, hi = (np.asarray(x, np.float64) for x in er.expected_rank_by_histogram(
      jnp.asarray(z, jnp.float32), jnp.asarray(lse, jnp.float32), bin_width, range_nats))
  rel = np.abs(est - exact) / exact
  inside = np.mean((lo <= exact) & (exact <= hi))
  print(f"{name:<44} rows={len(z):>5} median rel err={np.median(rel):.2e} max={rel.max():.2e} "
        f"interval holds exact: {100 * inside:.1f}%  (bound {(1 - np.exp(-bin_width)) / 2:.2e})")


def zipf_rows(n, v, seed=0):
  rng = np.random.default_rng(seed)
  s = rng.uniform(0.8, 1.6, size=(n, 1))
  z = -s * np.log(np.arange(1, v + 1))[None] + 0.5 * rng.normal(size=(n, v))
  return rng.permuted(z, axis=1).astype(np.float32)


def demo_logits(workdir, n):
  from rankjax import models
  from rankjax.data import synthetic
  from rankjax.data.tokenizer import load_tokenizer
  from rankjax.train.checkpointing import restore_params
  import ml_collections
  config = ml_collections.ConfigDict(json.load(open(os.path.join(workdir, "config.json"))))
  model = models.build_model(config.model)
  params = restore_params(os.path.join(workdir, "runs", "ranktuner"), models.init_params(model, jax.random.PRNGKey(0)))
  tok = load_tokenizer(workdir)
  texts = [e.prompt + e.response for e in synthetic.make_splits(config.data.synthetic.seed, 0, 0, 64)["eval"]]
  ids = [[tok.bos_id] + tok.encode(t) for t in texts]
  width = max(map(len, ids))
  arr = np.zeros((len(ids), width), np.int32)
  seg = np.zeros_like(arr)
  for i, row in enumerate(ids):
    arr[i, :len(row)], seg[i, :len(row)] = row, 1
  logits = np.asarray(model.apply({"params": params}, jnp.asarray(arr), segment_ids=jnp.asarray(seg)))
  return logits[seg > 0][:n]


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--time-sizes", default="4096x32768")
  p.add_argument("--memory-sizes", default="4096x32768,8192x32768,4096x151936,8192x151936")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--token-chunk", type=int, default=128)
  p.add_argument("--demo-workdir", default="")
  p.add_argument("--time-dtype", default="float32", choices=["float32", "bfloat16"],
                 help="XLA:CPU has no fast bf16 matmul, so CPU timings default to float32")
  args = p.parse_args()
  parse = lambda s: [tuple(int(x) for x in item.split("x")) for item in s.split(",") if item]  # noqa: E731
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cores")
  cfg = losses.default_config()
  print(f"\n## histogram E[R] vs exact (bin width {cfg.histogram_bin_width} nats, range {cfg.histogram_range} nats)")
  accuracy_rows("synthetic Zipf-like rows, V=151936", zipf_rows(256, 151936), cfg.histogram_bin_width, cfg.histogram_range)
  accuracy_rows("synthetic Zipf-like rows, V=32768", zipf_rows(512, 32768, 1), cfg.histogram_bin_width, cfg.histogram_range)
  if args.demo_workdir:
    accuracy_rows("demo model (ranktuner run) logits, V=512", demo_logits(args.demo_workdir, 4096),
                  cfg.histogram_bin_width, cfg.histogram_range)
  for dtype in (jnp.bfloat16, jnp.float32):
    memory_table(parse(args.memory_sizes), args.token_chunk, dtype)
  time_table(parse(args.time_sizes), args.repeats, args.token_chunk, jnp.dtype(args.time_dtype))


if __name__ == "__main__":
  main()
