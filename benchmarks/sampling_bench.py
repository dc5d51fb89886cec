"""Sampling throughput: static batching (`rankjax.sampling.static_sampler.Sampler`, the evaluation harness's sampler
before issue 14) vs the continuous-batching engine
(`rankjax.sampling.engine.Engine`), side by side in one process, on the demo model and a 1-layer Qwen2.5-1.5B-shaped
model (random init), on an evaluation-like workload: P prompts x n samples at temperature 1.0, per-sample keys.

  python benchmarks/sampling_bench.py                                   # both models, CPU-sized defaults
  python benchmarks/sampling_bench.py --models demo --prompts 16 --mean-len 60 --cap 256 --repeats 3

The workload. Prompts are random token ids, lengths uniform in --prompt-len (default 40-120 on demo, 40-64 on
qwen1layer, whose prompt-width buckets each cost a compile of every method). Each sample's length
follows a geometric distribution of mean --mean-len capped at --cap (most samples stop early, a few run to the cap),
the shape of a math evaluation where a wrong chain of thought often runs to the limit. A random model has no useful
end-of-sequence token, so the lengths are made by the model itself: `StopHazard` wraps it so that at every decode
step (every token after the first) the stop token STOP_ID has probability exactly 1 / mean-len at temperature 1
(its logit is set to logsumexp(other logits) + log(h / (1 - h))). A sample's length is then a function of its prompt
and its own PRNG key, identical under both methods (they draw token t of a sample with fold_in(key, t) in both) up to
float rounding of the logits, which the batch shapes change in the last bits (see `rankjax.sampling`), and
both methods run with ONE SamplingConfig (max_new_tokens = cap, stop_ids = (STOP_ID,)), exactly as the evaluation
harness does. The script checks that every sample's tokens agree across methods ("same samples" column).

Why not per-sample max_new_tokens: the engine takes it per request, but static batching has one SamplingConfig per
batch. Emulating "each batch runs to its longest row, then truncates" would need a compile per distinct batch
maximum, and a Request per sample would forbid the engine's shared prefill. With stop-id lengths, static batching
runs its while_loop until the longest row of each batch has stopped, which is precisely its waste, and the engine
can share one prefill between a prompt's n samples. The engine is also timed with one Request per sample
("engine, prefill per sample"), which isolates what the shared prefill buys.

Methods, all with the same number of decode rows (--slots):
- static: `Sampler` with rows = slots; items in prompt-major order (the harness's order), `rows` consecutive samples
  per batch, so a batch of 16 rows prefills the same prompt 16 times and decodes until its longest row stops;
- engine: one Request per prompt (n samples, one prefill copied into n slots), steps_per_sync = --steps-per-sync;
- engine, prefill per sample: one Request per sample (num_samples=1), the same engine (by default on the demo model
  only; --per-sample names the models).

Reported per model and method: wall seconds of the timed run (median of --repeats, methods alternating, after a
warm-up that compiles every prompt-width bucket of the workload; the warm-up's wall time is reported as "warm-up s":
compilation plus a few decode steps per call, as the warm-up's stop probability is ~1; the engine variants also run
the real workload once in their warm-up, untimed, since their prefill batches have a power-of-two number of rows
that depends on how many prompts enter slots together), useful tokens/s
(useful tokens: the sum of the samples' lengths, stop tokens excluded), the fraction of decode slot-steps that did
useful work, decode steps, prefills, and the speed-up over static. Slot-steps count decode steps only (the first
token of every sample is drawn from its prefill in both methods): static: sum over rows of (tokens drawn - 1) over
rows x (decode steps of the batch), the batch running until its longest row has drawn its stop token or the cap;
engine: `EngineStats.useful_fraction`. A final line checks the engine's greedy outputs against
static batching's (`generate_tokens`, what `generate` ran before it moved onto the engine) on the workload's
prompts for the demo model (unwrapped, --check-max-new tokens).

The Qwen2.5-1.5B-shaped model runs in float32: XLA:CPU has no fast bf16 matmul (see model_bench). Its decode step is
dominated by the 1536 x 151,936 LM head, about 0.47 GFLOP per row, so it gets a smaller default workload (shorter
samples too: the default run stays under ~5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rankjax import models  # noqa: E402
from rankjax.sampling.buckets import bucket_length  # noqa: E402
from rankjax.sampling.config import SamplingConfig  # noqa: E402
from rankjax.sampling.engine import Engine, Request  # noqa: E402
from rankjax.sampling.keys import sample_keys  # noqa: E402
from rankjax.sampling.static_sampler import Sampler  # noqa: E402
from rankjax.train.config import load_config_file  # noqa: E402

STOP_ID = 1  # prompts use ids >= 3; 0 is the pad id
WARMUP_LOGODDS = 30.0  # the warm-up's stop log-odds: every sample stops at its first decode step
# Per-model defaults: (prompts, mean length, cap, prompt lengths). The Qwen-shaped decode step costs ~40x the demo's
# on CPU and each prompt-width bucket is a compile of both methods, so it gets a smaller workload of narrower prompts.
DEFAULTS = {"demo": (8, 60, 256, "40,120"), "qwen1layer": (3, 12, 48, "40,64")}


@dataclasses.dataclass(frozen=True)
class StopHazard:
  """`inner` with the stop token's probability set to sigmoid(params["stop_logodds"]) at every decode step (one new
  token per row); prompts (more than one token, or return_hidden) are untouched. Params: {"model": inner params,
  "stop_logodds": float32 scalar}. Hashable, as the jitted samplers need of their model."""

  inner: object
  stop_id: int = STOP_ID

  @property
  def config(self):
    return self.inner.config

  def apply(self, variables, input_ids, **kwargs):
    params = variables["params"]
    out = self.inner.apply({"params": params["model"]}, input_ids, **kwargs)
    if input_ids.shape[1] != 1 or kwargs.get("return_hidden"):
      return out
    with_cache = kwargs.get("cache") is not None
    logits, cache = out if with_cache else (out, None)
    z = logits.astype(jnp.float32)
    others = jax.nn.logsumexp(z.at[..., self.stop_id].set(-jnp.inf), axis=-1)
    z = z.at[..., self.stop_id].set(others + params["stop_logodds"])
    return (z, cache) if with_cache else z


def demo_model_config():
  return load_config_file("configs/demo.py").model.copy_and_resolve_references()


def qwen_1layer_config(dtype: str):
  """Qwen2.5-1.5B's dimensions with one decoder layer (the full model has 28)."""
  c = models.default_config()
  c.vocab_size, c.hidden_size, c.num_layers, c.mlp_dim = 151936, 1536, 1, 8960
  c.num_heads, c.num_kv_heads, c.head_dim = 12, 2, 128
  c.qkv_bias, c.tie_embeddings = True, True
  c.rope_theta, c.norm_eps = 1e6, 1e-6
  c.architecture = "qwen2"
  c.dtype, c.param_dtype = dtype, "float32"
  return c


@dataclasses.dataclass
class Workload:
  prompts: list  # P token-id lists
  n: int  # samples per prompt
  keys: np.ndarray  # [P * n, 2], prompt-major
  sampling: SamplingConfig

  @property
  def items(self):
    return [(i, j) for i in range(len(self.prompts)) for j in range(self.n)]


def make_workload(vocab: int, prompts: int, n: int, prompt_len: tuple[int, int], cap: int, seed: int) -> Workload:
  rng = np.random.default_rng(seed)
  ps = [rng.integers(3, vocab, size=int(rng.integers(prompt_len[0], prompt_len[1] + 1))).tolist()
        for _ in range(prompts)]
  keys = sample_keys(seed, [("sampling_bench", i, j) for i in range(prompts) for j in range(n)])
  return Workload(ps, n, keys, SamplingConfig(cap, 1.0, 1.0, 0, (STOP_ID,)))


def warmup_workloads(w: Workload) -> list[Workload]:
  """One workload per bucketed prompt width of `w`: one prompt, one sample, the same sampling (so the same compiled
  shapes; a static batch's width is that of its widest prompt, so widths must be warmed one at a time)."""
  by_width = {}
  for p in w.prompts:
    by_width.setdefault(bucket_length(len(p)), p)
  return [Workload([p], 1, w.keys[:1], w.sampling) for p in by_width.values()]


def run_static(model, params, w: Workload, rows: int) -> dict:
  """Sampler in batches of `rows` consecutive (prompt-major) samples; per-batch decode steps from the longest row."""
  sampler = Sampler(model, params, w.sampling, rows)
  items = w.items
  samples, steps, slot_steps, useful = {}, 0, 0, 0
  t0 = time.perf_counter()
  for s in range(0, len(items), rows):
    part = items[s:s + rows]
    out = sampler.generate([w.prompts[i] for i, _ in part], w.keys[s:s + len(part)])
    # Tokens drawn by each row: its tokens plus the stop token when it stopped (at the cap it drew exactly cap).
    drawn = [len(c.tokens) + (c.finish == "stop") for c in out]
    batch_steps = max(drawn) - 1  # the prefill draws token 0; the while_loop one token per step
    steps += batch_steps
    slot_steps += rows * batch_steps
    useful += sum(d - 1 for d in drawn)
    samples.update({item: c.tokens for item, c in zip(part, out)})
  wall = time.perf_counter() - t0
  return {"wall": wall, "samples": samples, "steps": steps, "slot_steps": slot_steps, "useful_slot_steps": useful,
          "prefills": -(-len(items) // rows) * rows}


def run_engine(model, params, w: Workload, slots: int, max_len: int, steps_per_sync: int, shared: bool) -> dict:
  """The engine with one Request per prompt (`shared` prefill) or one Request per sample."""
  if shared:
    requests = [Request(p, w.sampling, keys=w.keys[i * w.n:(i + 1) * w.n]) for i, p in enumerate(w.prompts)]
  else:
    requests = [Request(w.prompts[i], w.sampling, keys=w.keys[k:k + 1]) for k, (i, _) in enumerate(w.items)]
  engine = Engine(model, params, slots, max_len, steps_per_sync=steps_per_sync)
  t0 = time.perf_counter()
  results = engine.run(requests)
  wall = time.perf_counter() - t0
  if shared:
    samples = {(i, j): s.tokens for i, r in enumerate(results) for j, s in enumerate(r)}
  else:
    samples = {item: r[0].tokens for item, r in zip(w.items, results)}
  st = engine.stats
  return {"wall": wall, "samples": samples, "steps": st.steps, "slot_steps": st.slot_steps,
          "useful_slot_steps": st.useful_slot_steps, "prefills": st.prefills}


def greedy_check(model, params, prompts, slots: int, max_new: int, steps_per_sync: int) -> tuple[int, int]:
  """(prompts whose engine greedy continuation equals static batching's, prompts). The static side is
  `generate_tokens` on one left-padded batch of all prompts (through `Sampler`), what `generate` ran before
  it moved onto the engine."""
  sampling = SamplingConfig(max_new)
  static = Sampler(model, params, sampling, len(prompts))
  want = [c.tokens for c in static.generate(prompts, np.zeros((len(prompts), 2), np.uint32))]
  requests = [Request(p, sampling) for p in prompts]
  max_len = max(bucket_length(len(p)) for p in prompts) + max_new
  got = Engine(model, params, slots, max_len, steps_per_sync=steps_per_sync).run(requests)
  return sum(g[0].tokens == x for g, x in zip(got, want)), len(prompts)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="demo,qwen1layer", help="comma-separated subset of demo,qwen1layer")
  p.add_argument("--prompts", type=int, default=0, help=f"prompts P (0: per-model default {DEFAULTS})")
  p.add_argument("--samples", type=int, default=16, help="samples n per prompt")
  p.add_argument("--mean-len", type=int, default=0, help="mean sample length before the cap (0: per-model default)")
  p.add_argument("--cap", type=int, default=0, help="max_new_tokens (0: per-model default)")
  p.add_argument("--prompt-len", default="", help="min,max prompt length, uniform (empty: per-model default)")
  p.add_argument("--slots", type=int, default=16, help="decode slots of the engine = rows of a static batch")
  p.add_argument("--steps-per-sync", type=int, default=4, help="engine decode steps between host syncs (the engine's default)")
  p.add_argument("--repeats", type=int, default=1, help="timed repeats per method (median), methods alternating")
  p.add_argument("--per-sample", default="demo",
                 help="models on which the engine is also timed with one Request per sample (comma list, or none)")
  p.add_argument("--dtype", default="float32", help="compute dtype of qwen1layer (XLA:CPU: float32 is faster)")
  p.add_argument("--check-max-new", type=int, default=16, help="new tokens of the greedy check (0: skip it)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()

  device = jax.devices()[0]
  print(f"jax {jax.__version__}, {device.platform} ({device.device_kind}), {os.cpu_count()} cores; temperature 1.0, "
        f"slots = static rows = {args.slots}, steps_per_sync {args.steps_per_sync}, median of {args.repeats} "
        "alternating repeats after a warm-up")
  rows, checks = [], []
  for name in args.models.split(","):
    config = demo_model_config() if name == "demo" else qwen_1layer_config(args.dtype)
    d_prompts, d_mean, d_cap, d_len = DEFAULTS[name]
    prompts, mean_len, cap = args.prompts or d_prompts, args.mean_len or d_mean, args.cap or d_cap
    prompt_len = tuple(int(x) for x in (args.prompt_len or d_len).split(","))
    inner = models.build_model(config)
    inner_params = models.init_params(inner, jax.random.PRNGKey(args.seed))
    model = StopHazard(inner)
    hazard = 1.0 / mean_len
    params = {"model": inner_params, "stop_logodds": jnp.float32(math.log(hazard / (1 - hazard)))}
    warm_params = {"model": inner_params, "stop_logodds": jnp.float32(WARMUP_LOGODDS)}
    w = make_workload(config.vocab_size, prompts, args.samples, prompt_len, cap, args.seed)
    max_len = max(bucket_length(len(q)) for q in w.prompts) + cap
    methods = {
        "static": lambda prm, wl: run_static(model, prm, wl, args.slots),
        "engine": lambda prm, wl: run_engine(model, prm, wl, args.slots, max_len, args.steps_per_sync, True),
    }
    if name in args.per_sample.split(","):
      methods["engine, prefill per sample"] = lambda prm, wl: run_engine(model, prm, wl, args.slots, max_len,
                                                                         args.steps_per_sync, False)
    warm_s = {}
    for method, fn in methods.items():
      t0 = time.perf_counter()
      for warm in warmup_workloads(w):
        fn(warm_params, warm)
      if method != "static":  # the engine's prefill batches (power-of-two rows) take the shapes the workload needs
        fn(params, w)
      warm_s[method] = time.perf_counter() - t0
    runs = {m: [] for m in methods}
    for _ in range(args.repeats):
      for method, fn in methods.items():
        runs[method].append(fn(params, w))
    lengths = [len(t) for t in runs["static"][0]["samples"].values()]
    print(f"\n{name}: {models.count_params(inner_params):,} params ({config.dtype}), {prompts} prompts x {args.samples}"
          f" samples, prompt lengths {min(len(q) for q in w.prompts)}-{max(len(q) for q in w.prompts)}, "
          f"stop probability 1/{mean_len} per decode step, cap {cap}: sample lengths mean {np.mean(lengths):.1f}, "
          f"median {np.median(lengths):.0f}, max {max(lengths)}, {sum(x >= cap for x in lengths)} at the cap")
    reference = runs["static"][0]["samples"]
    base = None
    for method, rs in runs.items():
      r = rs[0]
      wall = statistics.median(x["wall"] for x in rs)
      useful = sum(len(t) for t in r["samples"].values())
      same = sum(r["samples"][k] == reference[k] for k in reference)
      rate = useful / wall
      base = rate if method == "static" else base
      rows.append((name, method, wall, warm_s[method], useful, rate, r["useful_slot_steps"] / max(r["slot_steps"], 1),
                   r["steps"], 1e3 * wall / max(r["steps"], 1), r["prefills"], f"{same}/{len(reference)}", rate / base))
    if name == "demo" and args.check_max_new:
      checks.append((name, *greedy_check(inner, inner_params, w.prompts, args.slots, args.check_max_new,
                                         args.steps_per_sync)))

  print("\n| model | method | wall s | warm-up s | useful tokens | useful tokens/s | useful slot-steps | decode steps "
        "| wall ms / decode step | prefills | same samples | speed-up |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for name, method, wall, warm, useful, rate, frac, steps, ms, prefills, same, speed in rows:
    print(f"| {name} | {method} | {wall:.2f} | {warm:.1f} | {useful:,} | {rate:,.0f} | {100 * frac:.1f}% | {steps:,} "
          f"| {ms:,.1f} | {prefills} | {same} | {speed:.2f}x |")
  print("\nuseful tokens: sum of sample lengths (stop token excluded); useful slot-steps: decode slot-steps that drew a "
        "token of a live sample; static prefills: rows of its batched prefills; same samples: samples whose tokens "
        "equal static batching's; wall ms / decode step: wall s over decode steps (prefills and host work included).")
  for name, ok, total in checks:
    print(f"greedy check ({name}, {args.check_max_new} new tokens): engine == static generate_tokens on {ok}/{total} "
          "prompts")


if __name__ == "__main__":
  main()
