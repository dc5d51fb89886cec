"""The README's fit table: full fine-tuning of Qwen2.5-Math-7B and Qwen3-8B at the paper's global batch (256 x 2048)
planned with `python -m rankjax.plan` on TPU slices, for RankTuner (bound), RankTuner (exact, E[R] histogram) and SFT.

python experiments/plan_fit_table.py --out=plans/fit_table [--parallel=2] [--cells=MODEL:LOSS:TOPOLOGY,...]

Each cell is one `rankjax.plan` command (train step only) in its own process, writing OUT/<model>/<loss>/<slice>/.
A cell starts at the config's micro-batch (16 sequences per micro-step, 16 micro-steps, remat per layer), or at one
sequence per chip on slices of more than 16 chips (a micro-batch smaller than the batch ways is replicated: every
chip would compute all of it); one that does not fit is planned again with the micro-batch halved (grad_accum_steps
doubled) while it stays at least one sequence per chip and at least `--min-micro-batch`. A cell whose
plan.json exists is not compiled again. Prints the Markdown table (one row per cell; the README's is this output).
Each compile takes 5-10 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rankjax.plan import topologies  # noqa: E402
MODELS = {"Qwen2.5-Math-7B": "configs/qwen25_math_7b.py", "Qwen3-8B": "configs/qwen3_8b.py"}
LOSSES = {"ranktuner-bound": ["--config.loss.name=ranktuner", "--config.loss.form=bound"],
          "ranktuner-exact": ["--config.loss.name=ranktuner", "--config.loss.form=exact",
                              "--config.loss.expected_rank=histogram"],
          "sft": ["--config.loss.name=sft"]}
TOPOLOGIES = ("v5p-8", "v4-8", "v4-16", "v5e-16", "v5e-32", "v6e-8")
GLOBAL_BATCH = 256


def cell_dir(out: str, model: str, loss: str, topology: str) -> str:
  return os.path.join(out, model, loss, topology)


def plan_cell(out: str, model: str, loss: str, topology: str, min_micro: int, compile_missing: bool = True) -> dict:
  """Plans one cell, halving the micro-batch until it fits (or reaches min_micro); returns its last plan.json
  (with "exit" and "message" added) or {"exit": rc, "message": ...} when no plan was written. Without
  `compile_missing`, a cell with no plan yet is {"exit": None, "message": "not planned"}."""
  chips = topologies.get(topology).chips
  accum = min(16, GLOBAL_BATCH // chips)
  while True:
    workdir = os.path.join(cell_dir(out, model, loss, topology), f"micro{GLOBAL_BATCH // accum}")
    path = os.path.join(workdir, "plan.json")
    if not os.path.exists(os.path.join(workdir, "exit.json")) and not compile_missing:
      return {"exit": None, "message": ""}
    if not os.path.exists(path) and not os.path.exists(os.path.join(workdir, "exit.json")):
      cmd = [sys.executable, "-m", "rankjax.plan", f"--config={MODELS[model]}", f"--topology={topology}",
             f"--workdir={workdir}", "--nosampling", f"--config.init_from=configs/architectures/{model}",
             f"--config.grad_accum_steps={accum}", *LOSSES[loss]]
      done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
      message = (done.stderr.strip().splitlines() or [""])[-1]
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, "exit.json"), "w", encoding="utf-8") as f:
        json.dump({"exit": done.returncode, "message": message}, f)
    with open(os.path.join(workdir, "exit.json"), encoding="utf-8") as f:
      status = json.load(f)
    plan = {}
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        plan = json.load(f)
    plan.update(status)
    smaller = GLOBAL_BATCH // (2 * accum)
    if status["exit"] != 3 or smaller < max(min_micro, chips):
      return plan
    accum *= 2


def row(model: str, loss: str, topology: str, plan: dict) -> str:
  train = plan.get("train") or {}
  if not train:
    fits = "not planned" if plan.get("exit") is None else "no"
    return f"| {model} | {loss} | {topology} | {fits} | | | | {plan.get('message', '')} |"
  m = train["memory_per_chip_bytes"]
  fits = ("yes" if train["fits"] else "no") + (" (batch replicated)" if train.get("batch_replicated") else "")
  step = train["roofline"]["step_seconds"]
  return (f"| {model} | {loss} | {topology} | {fits} | {m['peak'] / 2 ** 30:.1f} / {m['hbm'] / 2 ** 30:.0f} | "
          f"{train['batch']['micro_batch']} ({train['model']['remat']}) | {step:.0f} s | "
          f"{train['compile_seconds']:.0f} s |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="plans/fit_table")
  parser.add_argument("--parallel", type=int, default=1)
  parser.add_argument("--min-micro-batch", type=int, default=4)
  parser.add_argument("--cells", default="", help="MODEL:LOSS:TOPOLOGY,... (default: every combination)")
  parser.add_argument("--report_only", action="store_true", help="print the table of the plans already in OUT")
  args = parser.parse_args()
  cells = ([tuple(c.split(":")) for c in args.cells.split(",")] if args.cells else
           [(m, loss, t) for m in MODELS for loss in LOSSES for t in TOPOLOGIES])
  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    plans = list(pool.map(lambda c: plan_cell(args.out, *c, args.min_micro_batch, not args.report_only), cells))
  print("| model | loss | slice | fits | peak / HBM GiB per chip | micro-batch (remat) | step at 40% MFU | compile |")
  print("|---|---|---|---|---:|---:|---:|---:|")
  for cell, plan in zip(cells, plans):
    print(row(*cell, plan), flush=True)


if __name__ == "__main__":
  main()
