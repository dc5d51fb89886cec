"""The end-to-end demo behind `make demo`: python -m rankjax.demo --config=configs/demo.py --workdir=DIR.

1. synthetic arithmetic word problems; 2. a byte-level BPE tokenizer trained on them;
3. a tiny base model pretrained with plain cross-entropy on the pretraining formats;
4. from that base, one fine-tuning run per method on held-out formats (loss on solutions only);
5. greedy decoding on unseen problems, exact match of the final answer;
6. the noise diagnostic (the paper's Table 1) on the base model: WORKDIR/noise_diagnostic/;
7. WORKDIR/results.{md,json}; WORKDIR/report.{md,csv,json}, loss_curves.png and metrics.png: the report over the
   fine-tuning runs (`python -m rankjax.report WORKDIR/runs --out=WORKDIR`, with its curves.png named
   loss_curves.png), which reads each run's metrics.jsonl and the greedy accuracy written to
   WORKDIR/runs/<method>/eval/row.json.
Every stage resumes when relaunched. Exit status: 0 when done; 75 when SIGTERM or SIGINT stopped a training stage
after saving a checkpoint (relaunch to resume); 2 for a bad flag or config value (one line on stderr); 1 on an error.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from rankjax import cli, models
from rankjax import report as run_report
from rankjax.data import pipeline, sources, stream
from rankjax.diagnostics import noise
from rankjax.models.errors import ConfigError
from rankjax.eval.answer_accuracy import answer_accuracy, make_teacher_forced_aux
from rankjax.rundir import atomic, layout
from rankjax.rundir.progress import read_metrics
from rankjax.train import checkpointing
from rankjax.train import config as run_config
from rankjax.train.loop import make_run_mesh, train, write_config
from rankjax.train.methods import method_overrides, parse_methods

_FLAGS = {}


def stage_config(config, **overrides):
  """A copy of `config` as a single training run, with dotted-key overrides."""
  return run_config.with_overrides(config, overrides)


def methods_of(config) -> list[str]:
  methods = parse_methods(config.demo.methods)
  for m in methods:
    run_config.validate(stage_config(config, **method_overrides(m)))
  return methods


def _final_metrics(workdir: str) -> dict:
  rows = read_metrics(workdir)
  return rows[-1] if rows else {}


def _markdown(rows: list[dict], header: str) -> str:
  lines = [header, "", "| method | final train loss | final train NLL (nats) | mean RankTuner weight (eval) "
           "| answer accuracy |", "|---|---|---|---|---|"]
  for r in rows:
    loss = "-" if r["final_train_loss"] is None else f"{r['final_train_loss']:.4f}"
    nll = "-" if r["final_train_nll"] is None else f"{r['final_train_nll']:.4f}"
    lines.append(f"| {r['method']} | {loss} | {nll} | {r['mean_ranktuner_weight']:.4f} | "
                 f"{r['accuracy']:.3f} ({r['correct']}/{r['num_eval']}) |")
  return "\n".join(lines) + "\n"


class StageClock:
  """Wall seconds of consecutive stages: `lap(name)` records (and prints) the seconds since the previous lap."""

  def __init__(self):
    self.seconds, self._last = {}, time.time()

  def lap(self, name: str) -> None:
    now = time.time()
    self.seconds[name] = round(now - self._last, 1)
    self._last = now
    print(f"[demo] {name}: {self.seconds[name]:.1f} s", flush=True)


def run(config, workdir: str) -> list[dict]:
  """Runs every demo stage in `workdir`; returns the result rows (also written to results.*, with the wall seconds
  of each stage as results.json's stage_seconds)."""
  t0 = time.time()
  clock = StageClock()
  run_config.validate(config)
  methods = methods_of(config)
  os.makedirs(workdir, exist_ok=True)
  write_config(config, workdir)
  tokenizer = stream.run_tokenizer(config, workdir, config.model.vocab_size)
  tokenizer_path = config.data.tokenizer_path or workdir
  eval_records = sources.load_records(config.data, "eval")
  clock.lap("data and tokenizer")

  base_dir = os.path.join(workdir, "base")
  print(f"[demo] 1/3 pretraining the base model ({config.demo.pretrain_steps} steps) in {base_dir}", flush=True)
  train(stage_config(config, **{
      "data.split": "pretrain", "data.loss_on": "all", "data.tokenizer_path": tokenizer_path,
      "loss.name": "sft", "loss.diagnostics": False, "total_steps": config.demo.pretrain_steps,
      "checkpoint_every": max(config.demo.pretrain_steps // 2, 1),
      "optimizer.learning_rate": config.demo.pretrain_learning_rate}), base_dir)
  clock.lap("pretraining")

  run_dirs = {}
  for i, method in enumerate(methods):
    run_dirs[method] = os.path.join(workdir, "runs", method)
    print(f"[demo] 2/3 fine-tuning with {method} ({i + 1}/{len(methods)}) in {run_dirs[method]}", flush=True)
    train(stage_config(config, **method_overrides(method), **{"init_from": base_dir,
                                                             "data.tokenizer_path": tokenizer_path}), run_dirs[method])
    clock.lap(f"fine-tuning {method}")

  print(f"[demo] 3/3 evaluating on {len(eval_records)} unseen problems", flush=True)
  model = models.build_model(config.model)
  like = checkpointing.params_target(model, make_run_mesh(config))
  formatter = stream.make_formatter(config.data, tokenizer)
  eval_batch = pipeline.example_batch(eval_records, formatter, config.data.seq_len)
  diag_config = stage_config(config, **{"loss.name": "ranktuner", "loss.diagnostics": True}).loss
  teacher_forced_aux = make_teacher_forced_aux(model, diag_config)  # one program for every model
  rows, samples = [], {}
  for method, d in {"base (no fine-tuning)": base_dir, **run_dirs}.items():
    params = checkpointing.restore_params(d, like)
    acc, examples = answer_accuracy(model, params, formatter, eval_records, config.demo.max_new_tokens,
                                    config.demo.eval_batch_size)
    aux = teacher_forced_aux(params, eval_batch)
    final = _final_metrics(d) if d != base_dir else {}
    rows.append({"method": method, "final_train_loss": final.get("loss"), "final_train_nll": final.get("mean_nll"),
                 "mean_ranktuner_weight": aux["mean_ranktuner_weight"], "eval_nll": aux["mean_nll"],
                 "accuracy": acc, "correct": int(sum(e["correct"] for e in examples)), "num_eval": len(examples)})
    samples[method] = examples[:3]
    if d != base_dir:  # read by the report (eval/greedy_accuracy, eval/mean_ranktuner_weight, eval/eval_nll)
      write_eval_row(d, rows[-1])
    clock.lap(f"evaluation of {method}")

  noise_dir = os.path.join(workdir, "noise_diagnostic")
  print(f"[demo] noise diagnostic of the base model ({config.demo.noise_examples} fine-tuning examples) in "
        f"{noise_dir}", flush=True)
  noise_config = noise.default_config()
  noise_config.update({"checkpoint": base_dir, "num_examples": int(config.demo.noise_examples), "progress": False})
  noise.run_noise_diagnostic(noise_config, noise_dir)
  with open(os.path.join(noise_dir, "results.md"), encoding="utf-8") as f:
    noise_table = f.read()
  clock.lap("noise diagnostic")

  wall = time.time() - t0
  header = (f"# rankjax demo results\n\nBase: {config.demo.pretrain_steps} pretraining steps; each method "
            f"{config.total_steps} fine-tuning steps of {config.data.batch_size} sequences from the same base; "
            f"accuracy = exact match of the final answer under greedy decoding on {len(eval_records)} unseen "
            f"problems of the held-out formats. Mean RankTuner weight: teacher-forced on the eval set. "
            f"Wall time of this invocation: {wall:.0f} s.")
  table = _markdown(rows, header) + "\n## Noise diagnostic of the base model\n\n" + noise_table
  with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(table)
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"rows": rows, "wall_seconds": wall, "stage_seconds": clock.seconds, "samples": samples}, f, indent=2)
  runs = run_report.collect_runs([os.path.join(workdir, "runs")])
  run_report.write_report(runs, workdir, dirs=[os.path.join(workdir, "runs")], file_names={"curves": "loss_curves.png"},
                          title=f"rankjax demo: report over the {len(runs)} fine-tuning runs")
  print(table, flush=True)
  print(f"[demo] wrote {workdir}/results.md, results.json; report.md, report.csv, report.json, loss_curves.png, "
        "metrics.png", flush=True)
  return rows


def write_eval_row(run_dir: str, row: dict) -> None:
  """RUN/eval/row.json: the demo's evaluation of a fine-tuning run (greedy accuracy, eval NLL in nats per token,
  mean RankTuner weight), which `rankjax.report` reports as eval/<field>."""
  os.makedirs(layout.eval_dir(run_dir), exist_ok=True)
  keep = ("accuracy", "correct", "num_eval", "mean_ranktuner_weight", "eval_nll")
  out = {("greedy_accuracy" if k == "accuracy" else k): row[k] for k in keep}
  atomic.write_json(layout.eval_row_path(run_dir), out)


def check_demo_config(config) -> None:
  """Raises ConfigError unless `config` is a demo config (it has the `demo` fields of configs/demo.py)."""
  if "demo" not in config:
    raise ConfigError("the config has no config.demo: the demo runs configs/demo.py (python -m rankjax.main runs "
                      "one training run of other configs)")


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines the command's flags in `flag_values`; only when run as a command (`cli.run`), so that importing this
  module defines none."""
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "Path to the demo's config file (configs/demo.py).", lock_config=True, flag_values=flag_values)
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Directory for every stage, results.*, the report and "
                                          "the plots.", flag_values=flag_values)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  config = _FLAGS["config"].value
  check_demo_config(config)
  from rankjax.train import preemption
  try:
    run(config, _FLAGS["workdir"].value)
  except preemption.Preempted as e:
    print(f"[rankjax] {e}", flush=True)
    sys.exit(preemption.PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
  cli.run(main, define_flags)
