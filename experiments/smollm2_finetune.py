"""A real fine-tune on the CPU: SmolLM2-135M-Instruct (GGUF) on GSM8K train with several loss schemes, same budget,
evaluated on a fixed GSM8K test subset. Not part of CI (about an hour on a 2-core machine with the defaults).

python experiments/smollm2_finetune.py --workdir=/tmp/smollm2_ft [--methods=sft,dft,ranktuner] [--seed=0] \
    [--problems=200] [--samples=1] [--max_new_tokens=384] [-- --config.total_steps=60 ...]

For each method: `python -m rankjax.main --config=configs/smollm2_gsm8k.py --workdir=DIR/<method>/seed<k>` (the
config's budget: total_steps x batch_size x seq_len tokens; extra `--config.*` flags after `--` go to every run), then
`python -m rankjax.evaluate` on the first `--problems` GSM8K test problems (greedy when --samples=1, else that many
samples at temperature 1.0), and the same evaluation of the base (the GGUF file itself). Writes DIR/results.md and
DIR/results.json: Pass@1 with its 95% interval over problems, training wall time, final training loss. A finished
run or evaluation is not repeated. One seed by default: the interval covers the choice of test problems and
sampling, not training variation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rankjax.models.gguf_checkpoint import smollm2_gguf_path  # noqa: E402
from rankjax.rundir.progress import read_metrics  # noqa: E402


def _run(cmd: list[str], log: str) -> float:
  """Runs `cmd` in the repository root with its output in `log`; returns its wall time in seconds."""
  start = time.time()
  with open(log, "a", encoding="utf-8") as f:
    done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
  if done.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed with exit status {done.returncode}; see {log}")
  return time.time() - start


def evaluate(checkpoint: str, out: str, args) -> dict:
  """Evaluates `checkpoint` into `out` (skipped when out/results.json exists); returns GSM8K's results."""
  results = os.path.join(out, "results.json")
  if not os.path.exists(results):
    os.makedirs(out, exist_ok=True)
    greedy = args.samples == 1
    _run([sys.executable, "-m", "rankjax.evaluate", "--config=configs/eval_math.py", f"--workdir={out}",
          f"--config.checkpoint={checkpoint}", "--config.benchmarks=gsm8k", f"--config.num_problems={args.problems}",
          f"--config.num_samples={args.samples}", "--config.pass_k=(1,)", f"--config.temperature={0.0 if greedy else 1.0}",
          f"--config.max_new_tokens={args.max_new_tokens}", "--config.dtype=float32", f"--config.seed={args.seed}",
          f"--config.batch_size={args.eval_batch}", "--config.progress=False"], os.path.join(out, "log.txt"))
  with open(results, encoding="utf-8") as f:
    return json.load(f)["benchmarks"]["gsm8k"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--methods", default="sft,dft,ranktuner")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--problems", type=int, default=200)
  parser.add_argument("--samples", type=int, default=1)
  parser.add_argument("--max_new_tokens", type=int, default=384)
  parser.add_argument("--eval_batch", type=int, default=32)
  parser.add_argument("overrides", nargs="*", help="--config.* flags for every training run (after --)")
  args = parser.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  rows = {"base": {"pass@1": evaluate(smollm2_gguf_path(), os.path.join(args.workdir, "base_eval"), args)}}
  for method in args.methods.split(","):
    run = os.path.join(args.workdir, method, f"seed{args.seed}")
    timing = os.path.join(run, "train_seconds.json")
    if not os.path.exists(timing):
      os.makedirs(run, exist_ok=True)
      seconds = _run([sys.executable, "-m", "rankjax.main", "--config=configs/smollm2_gsm8k.py", f"--workdir={run}",
                      f"--config.loss.name={method}", f"--config.seed={args.seed}",
                      f"--config.data.shuffle_seed={args.seed}", *args.overrides], os.path.join(run, "log.txt"))
      with open(timing, "w", encoding="utf-8") as f:
        json.dump({"seconds": seconds}, f)
    with open(timing, encoding="utf-8") as f:
      seconds = json.load(f)["seconds"]
    metrics = read_metrics(run)
    losses = [m["loss"] for m in metrics if "loss" in m]
    rows[method] = {"pass@1": evaluate(run, os.path.join(run, "eval"), args), "train_seconds": seconds,
                    "final_loss": losses[-1] if losses else float("nan"), "steps": len(losses)}
  lines = [f"GSM8K test, first {args.problems} problems, " + ("greedy" if args.samples == 1 else
                                                              f"{args.samples} samples at T = 1.0") +
           f", up to {args.max_new_tokens} new tokens; seed {args.seed}; SmolLM2-135M-Instruct (Q4_1 GGUF) base.", "",
           "| model | Pass@1 (%) | 95% interval | mean tokens | truncated (%) | training wall time | final train loss |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for name, row in rows.items():
    p = row["pass@1"]
    train = f"{row['train_seconds'] / 60:.1f} min" if "train_seconds" in row else ""
    loss = f"{row['final_loss']:.3f}" if "final_loss" in row else ""
    lines.append(f"| {name} | {100 * p['pass@1']:.1f} | ±{100 * p['pass@1_ci95']:.1f} | "
                 f"{p['mean_generated_tokens']:.0f} | {100 * p['truncated']:.1f} | {train} | {loss} |")
  text = "\n".join(lines) + "\n"
  with open(os.path.join(args.workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(text)
  with open(os.path.join(args.workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(rows, f, indent=2)
  print(text)


if __name__ == "__main__":
  main()
