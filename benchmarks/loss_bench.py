"""Fused (chunked, custom-VJP) loss: what RankTuner costs over cross-entropy, where that time goes, the compiled
temporary memory of dense vs fused, and the accuracy of the histogram E[R]. Everything printed comes from this
one run; ratios compare methods timed side by side, alternating, on the same inputs.

  python benchmarks/loss_bench.py                       # d in {512, 1536, 3584}, N=4096, V=32768 (3 repeats),
                                                        # V=151936 at 1 repeat, ablation at d=512
  python benchmarks/loss_bench.py --dims 1536 --time-sizes 4096x32768 --large-sizes "" --repeats 5
  python benchmarks/loss_bench.py --demo-workdir workdirs/demo   # E[R] accuracy on the demo model's logits too

Every fused method makes the same backward pass (only log p_t has a gradient), so the differences are the
forward statistics: `--ablation-dims` times the fused forward+backward with one statistic added at a time.
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

PLAIN = {"diagnostics": False}
TIME_METHODS = {  # name: (fused, loss fields)
    "fused CE": (True, {"name": "sft", **PLAIN}),
    "fused CE, timed again (noise)": (True, {"name": "sft", **PLAIN}),
    "fused RankTuner exact (histogram)": (True, {"name": "ranktuner", "expected_rank": "histogram", **PLAIN}),
    "fused RankTuner exact (sort)": (True, {"name": "ranktuner", "expected_rank": "sort", **PLAIN}),
    "fused RankTuner bound": (True, {"name": "ranktuner", "form": "bound", **PLAIN}),
    "fused RankTuner + diagnostics (logged step)": (True, {"name": "ranktuner", "diagnostics": True}),
}
MEMORY_METHODS = {
    "dense CE": (False, {"name": "sft", **PLAIN}),
    "dense RankTuner (sort)": (False, {"name": "ranktuner", "expected_rank": "sort", **PLAIN}),
    "fused CE": (True, {"name": "sft", **PLAIN}),
    "fused RankTuner (histogram)": (True, {"name": "ranktuner", "expected_rank": "histogram", **PLAIN}),
    "fused RankTuner (sort)": (True, {"name": "ranktuner", "expected_rank": "sort", **PLAIN}),
}
NONE = {"with_entropy": False, "with_rank": False, "with_expected_rank": False}
ABLATION = {  # name: linear_token_stats flags; each row adds one statistic's passes to log p_t
    "log p_t only (= CE: max, sum of exp)": NONE,
    "log p_t only, timed again (noise)": dict(NONE),
    "+ entropy H_t (one more sum)": dict(NONE, with_entropy=True),
    "+ rank R_t (one comparison count)": dict(NONE, with_rank=True),
    "+ H_t and R_t (what the bound form needs)": dict(NONE, with_entropy=True, with_rank=True),
    "+ E[R_t] histogram (int32 count scatter)": dict(NONE, with_expected_rank=True, expected_rank="histogram"),
    "+ R_t and E[R_t] histogram (exact form)": dict(NONE, with_rank=True, with_expected_rank=True,
                                                      expected_rank="histogram"),
    "+ E[R_t] sort": dict(NONE, with_expected_rank=True, expected_rank="sort"),
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


def ablation_fn(flags: dict, token_chunk: int):
  def f(h, w, t, m):
    stats, _ = losses.linear_token_stats(h, w, t, token_chunk, mask=m, **flags)
    kept = [x for k, x in ((k, stats[k]) for k in stats.keys()) if k != "log_prob"]
    # Every statistic reaches the output, so none is dead code; only log p_t has a gradient.
    return jnp.sum(jnp.where(m > 0, stats.log_prob, 0.0)) + sum(jnp.sum(x.astype(jnp.float32)) * 0 for x in kept)
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))


def inputs(n, v, d, dtype=jnp.bfloat16, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  h = jax.random.normal(k1, (n, d), jnp.float32).astype(dtype)
  w = (jax.random.normal(k2, (d, v), jnp.float32) / np.sqrt(d) * 4).astype(dtype)
  t = jax.random.randint(k3, (n,), 0, v)
  m = (jnp.arange(n) % 2 == 0).astype(jnp.float32)  # 50% supervised
  return h, w, t, m


def temp_bytes(fn, args) -> int:
  shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
  return int(fn.lower(*shapes).compile().memory_analysis().temp_size_in_bytes)


def memory_table(sizes, d, token_chunk, dtype):
  print(f"\n## compiled temporary memory, forward+backward ({jnp.dtype(dtype).name} inputs, d={d}, "
        f"token_chunk={token_chunk})")
  print(f"{'N':>6} {'V':>7}  " + "".join(f"{m:>30}" for m in MEMORY_METHODS) + f"{'fused RT(hist)/dense CE':>26}")
  for n, v in sizes:
    args = inputs(n, v, d, dtype)
    row = {name: temp_bytes(loss_fn(fused, fields, token_chunk), args)
           for name, (fused, fields) in MEMORY_METHODS.items()}
    print(f"{n:>6} {v:>7}  " + "".join(f"{row[m] / 2**20:>27.0f}MiB" for m in MEMORY_METHODS)
          + f"{row['fused RankTuner (histogram)'] / row['dense CE']:>26.3f}", flush=True)


def timed(fns: dict, args, repeats: int) -> tuple[dict, dict]:
  """(median, min) seconds per call of each function, over `repeats` rounds that call them in turn (after one
  warm-up call each, which also compiles)."""
  for fn in fns.values():
    jax.block_until_ready(fn(*args))
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - t0)
  return ({k: statistics.median(v) for k, v in times.items()}, {k: min(v) for k, v in times.items()})


def time_table(dims, sizes, repeats, token_chunk, dtype):
  print(f"\n## forward+backward time, {repeats} alternating runs ({jnp.dtype(dtype).name} inputs, 50% mask, "
        f"token_chunk={token_chunk}); ratios = method / fused CE of the same run, of the medians and of the minima")
  print(f"{'d':>5} {'N':>5} {'V':>7}  {'method':<45}{'median s':>9}{'min s':>8}{'ratio med':>10}{'ratio min':>10}")
  for n, v in sizes:
    for d in dims:
      args = inputs(n, v, d, dtype)
      med, low = timed({name: loss_fn(fused, fields, token_chunk)
                        for name, (fused, fields) in TIME_METHODS.items()}, args, repeats)
      for name in med:
        print(f"{d:>5} {n:>5} {v:>7}  {name:<45}{med[name]:>9.3f}{low[name]:>8.3f}"
              f"{med[name] / med['fused CE']:>10.3f}{low[name] / low['fused CE']:>10.3f}", flush=True)


def ablation_table(dims, size, repeats, token_chunk, dtype):
  n, v = size
  print(f"\n## where the time goes: fused forward+backward with one statistic added at a time (N={n}, V={v}, "
        f"{jnp.dtype(dtype).name}, {repeats} alternating runs); extra = ms over log p_t only, of the minima")
  print(f"{'d':>5}  {'statistics':<46}{'median s':>9}{'min s':>8}{'ratio min':>10}{'extra ms (min)':>15}")
  for d in dims:
    args = inputs(n, v, d, dtype)
    med, low = timed({name: ablation_fn(flags, token_chunk) for name, flags in ABLATION.items()}, args, repeats)
    base = low[next(iter(ABLATION))]
    for name in med:
      print(f"{d:>5}  {name:<46}{med[name]:>9.3f}{low[name]:>8.3f}{low[name] / base:>10.3f}"
            f"{(low[name] - base) * 1e3:>15.0f}", flush=True)


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
  width = np.median((hi - lo) / exact)
  print(f"{name:<44} rows={len(z):>5} median rel err={np.median(rel):.2e} max={rel.max():.2e} "
        f"interval holds exact: {100 * inside:.1f}%, median width {width:.2e} of E[R] "
        f"(bound on the error: tanh(delta/2) = {np.tanh(bin_width / 2):.2e})")


def zipf_rows(n, v, seed=0):
  rng = np.random.default_rng(seed)
  s = rng.uniform(0.8, 1.6, size=(n, 1))
  z = -s * np.log(np.arange(1, v + 1))[None] + 0.5 * rng.normal(size=(n, v))
  return rng.permuted(z, axis=1).astype(np.float32)


def demo_logits(workdir, n):
  from rankjax import models
  from rankjax.data import synthetic
  from rankjax.data.tokenizer import load_tokenizer
  from rankjax.rundir import layout
  from rankjax.train.checkpointing import restore_params
  import ml_collections
  with open(layout.config_path(workdir), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
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
  p.add_argument("--dims", default="512,1536,3584", help="model widths d of the time table")
  p.add_argument("--time-sizes", default="4096x32768", help="NxV sizes timed with --repeats")
  p.add_argument("--large-sizes", default="4096x151936", help="NxV sizes timed with one repeat")
  p.add_argument("--ablation-dims", default="512", help="d of the per-statistic table (first --time-sizes)")
  p.add_argument("--memory-sizes", default="4096x32768,4096x151936")
  p.add_argument("--memory-dim", type=int, default=1536)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--token-chunk", type=int, default=128)
  p.add_argument("--demo-workdir", default="")
  p.add_argument("--time-dtype", default="float32", choices=["float32", "bfloat16"],
                 help="XLA:CPU has no fast bf16 matmul, so CPU timings default to float32")
  args = p.parse_args()
  parse = lambda s: [tuple(int(x) for x in item.split("x")) for item in s.split(",") if item]  # noqa: E731
  dims = [int(x) for x in args.dims.split(",") if x]
  dtype = jnp.dtype(args.time_dtype)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cores")
  cfg = losses.default_config()
  print(f"\n## histogram E[R] vs exact (bin width {cfg.histogram_bin_width} nats, range {cfg.histogram_range} nats)")
  accuracy_rows("synthetic Zipf-like rows, V=151936", zipf_rows(256, 151936), cfg.histogram_bin_width, cfg.histogram_range)
  accuracy_rows("synthetic Zipf-like rows, V=32768", zipf_rows(512, 32768, 1), cfg.histogram_bin_width, cfg.histogram_range)
  if args.demo_workdir:
    accuracy_rows("demo model (ranktuner run) logits, V=512", demo_logits(args.demo_workdir, 4096),
                  cfg.histogram_bin_width, cfg.histogram_range)
  if args.memory_sizes:
    memory_table(parse(args.memory_sizes), args.memory_dim, args.token_chunk, jnp.bfloat16)
  if args.ablation_dims and args.time_sizes:
    ablation_table([int(x) for x in args.ablation_dims.split(",")], parse(args.time_sizes)[0], args.repeats,
                   args.token_chunk, dtype)
  if args.time_sizes:
    time_table(dims, parse(args.time_sizes), args.repeats, args.token_chunk, dtype)
  if args.large_sizes:
    time_table(dims, parse(args.large_sizes), 1, args.token_chunk, dtype)


if __name__ == "__main__":
  main()
