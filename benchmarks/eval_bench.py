"""Throughput of the math evaluation harness on the demo model (CPU): generation and grading, side by side.

.venv/bin/python benchmarks/eval_bench.py [--checkpoint workdirs/demo/runs/sft] [--problems 64]

Needs a trained demo workdir (`make demo` writes workdirs/demo). Prints
1. sampled generation (n = 4 samples of each held-out synthetic problem, temperature 1.0, at most 128 new
   tokens) at two batch sizes: generated tokens/s, samples/s and minutes per 1,000 samples, timed on a
   second pass (the first compiles every prompt-width bucket);
2. grading throughput (samples/s) of `GradingPool` with 1, 2 and 4 worker processes, on the generated
   completions and on LaTeX answers (fractions, roots, sets) that make math-verify work harder.
"""

from __future__ import annotations

import argparse
import os
import time

import jax

from rankjax.train.restore import load_checkpoint
from rankjax.eval import benchmarks, harness, settings
from rankjax.eval.grading import GradingPool
from rankjax.sampling.config import SamplingConfig
from rankjax.sampling.keys import sample_keys
from rankjax.sampling.static_sampler import Sampler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LATEX_CASES = [("The answer is $\\boxed{\\frac{1}{2}}$.", "0.5"), ("So \\boxed{2\\sqrt{3}}", "\\sqrt{12}"),
               ("\\boxed{\\{3, 1, 2\\}}", "\\{1,2,3\\}"), ("#### 1,000", "1000"), ("\\boxed{(0, 1]}", "(0,1]"),
               ("The final answer is 7.", "8"), ("\\boxed{x^2+2x+1}", "(x+1)^2"), ("no answer", "3")]


def generation(ckpt, problems, formatter, rows: int, n: int, max_new: int) -> dict:
  """Samples n completions of every problem in batches of `rows`; returns rates (compilation excluded)."""
  sampling = SamplingConfig(max_new, 1.0, 1.0, 0, formatter.tokenizer.stop_ids)
  sampler = Sampler(ckpt.model, ckpt.params, sampling, rows, formatter.tokenizer.pad_id or 0)
  items = [(p, j) for p in problems for j in range(n)]
  prompts = [formatter.prompt_ids(p.record) for p, _ in items]
  keys = sample_keys(0, [(p.benchmark, p.index, j) for p, j in items])
  for timed in (False, True):  # the first pass compiles every prompt-width bucket
    texts, tokens, t0 = [], 0, time.perf_counter()
    for s in range(0, len(items), rows):
      out = sampler.generate(prompts[s:s + rows], keys[s:s + rows])
      tokens += sum(len(c.tokens) for c in out)
      texts += [(formatter.tokenizer.decode(c.tokens), p.gold) for c, (p, _) in zip(out, items[s:s + rows])]
    seconds = time.perf_counter() - t0
  return {"rows": rows, "samples": len(items), "tokens_per_s": tokens / seconds, "samples_per_s": len(items) / seconds,
          "mean_tokens": tokens / len(items), "min_per_1k_samples": seconds / len(items) * 1000 / 60, "texts": texts}


def grading(pairs, workers: int) -> float:
  """Samples/s of a warm `GradingPool` of `workers` processes on `pairs` (pool start-up not timed)."""
  with GradingPool(workers, timeout_s=5.0) as pool:
    pool.grade_many(pairs[:workers * 8])  # start and warm every worker
    t0 = time.perf_counter()
    pool.grade_many(pairs)
    return len(pairs) / (time.perf_counter() - t0)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", default=os.path.join(REPO, "workdirs", "demo", "runs", "sft"))
  p.add_argument("--problems", type=int, default=64)
  p.add_argument("--samples", type=int, default=4)
  p.add_argument("--max_new_tokens", type=int, default=128)
  args = p.parse_args()
  if not os.path.isdir(args.checkpoint):
    raise SystemExit(f"no demo checkpoint at {args.checkpoint}: run `make demo` first (or pass --checkpoint)")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} devices), "
        f"{os.cpu_count()} CPUs; checkpoint {args.checkpoint}")
  ckpt = load_checkpoint(args.checkpoint)
  formatter = harness.make_formatter(ckpt.tokenizer, "auto", ckpt.plain_template, ckpt.trained_format)
  config = settings.default_config()
  problems = benchmarks.load_problems(settings.BenchmarkSpec("synthetic"), config.data, "", args.problems,
                                      ckpt.data_config)
  print(f"\n1. generation: {len(problems)} held-out synthetic problems x {args.samples} samples, T = 1.0, "
        f"<= {args.max_new_tokens} new tokens")
  print("| batch rows | generated tokens/s | samples/s | mean tokens/sample | min per 1k samples |")
  print("|---|---|---|---|---|")
  texts = []
  for rows in (32, 128):
    r = generation(ckpt, problems, formatter, rows, args.samples, args.max_new_tokens)
    texts = r.pop("texts")
    print(f"| {rows} | {r['tokens_per_s']:.0f} | {r['samples_per_s']:.1f} | {r['mean_tokens']:.1f} | "
          f"{r['min_per_1k_samples']:.2f} |")
  latex = LATEX_CASES * 32
  print(f"\n2. grading: {len(texts)} generated completions, and {len(latex)} LaTeX answers")
  print("| workers | generated: samples/s | LaTeX: samples/s |")
  print("|---|---|---|")
  rates = {}
  for workers in (1, 2, 4):
    rates[workers] = (grading(texts, workers), grading(latex, workers))
    print(f"| {workers} | {rates[workers][0]:.0f} | {rates[workers][1]:.0f} |")
  print(f"\nscaling 1 -> 2 workers: x{rates[2][1] / rates[1][1]:.2f} (LaTeX); this machine has "
        f"{os.cpu_count()} CPUs, so more workers than CPUs cannot help")


if __name__ == "__main__":
  main()
