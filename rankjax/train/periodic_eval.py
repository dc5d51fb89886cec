"""The sampled evaluation a training run does every `config.eval.every_steps` steps (see `run_config.eval_config`)."""

from __future__ import annotations

import os

from rankjax.data import sources
from rankjax.eval import harness
from rankjax.eval.grading import GradingPool
from rankjax.rundir import layout


class PeriodicEval:
  """Evaluates the current params on config.eval's benchmarks at due steps; problems and the grading pool are
  prepared once. Process 0 writes WORKDIR/eval/step_<N>/ (samples.jsonl, results.json, results.md)."""

  def __init__(self, config, workdir: str, model, tokenizer, mesh, lead: bool):
    self.every, self.total = int(config.eval.every_steps), int(config.total_steps)
    self.config, self.workdir, self.model, self.mesh = config.eval, workdir, model, mesh
    self.enabled = self.every > 0
    if not self.enabled:
      return
    self.formatter = harness.make_formatter(tokenizer, config.eval.prompt,
                                            config.eval.plain_template or sources.resolved(config.data, "plain_template"),
                                            config.data.prompt_format)
    data_dir = os.path.expanduser(config.eval.data.tfds_data_dir) or harness.default_data_dir(workdir)
    self.problems = harness.load_all_problems(config.eval, data_dir, config.data)
    self.pool = GradingPool(int(config.eval.grading.workers) or None, float(config.eval.grading.timeout_s)) \
        if lead else None

  def due(self, step: int) -> bool:
    """True when `step` completed optimizer steps call for an evaluation (every `every_steps`, and the last)."""
    return self.enabled and (step % self.every == 0 or step == self.total)

  def __call__(self, params, step: int) -> dict:
    """Returns {"eval/<benchmark>/pass@k": value, ...} of `params` after `step` steps ({} off process 0)."""
    out_dir = layout.eval_step_dir(self.workdir, step)
    results = harness.run_eval(self.model, params, self.formatter, self.problems, self.config, self.mesh,
                               out_dir=out_dir, extra_settings={"step": step}, grading_pool=self.pool)
    return harness.flat_metrics(results)

  def close(self) -> None:
    if self.enabled and self.pool is not None:
      self.pool.close()
