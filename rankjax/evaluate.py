"""Sampled math evaluation of a checkpoint: Pass@1 / Pass@k on GSM8K and the math sets.

python -m rankjax.evaluate --config=configs/eval_math.py --workdir=DIR --config.checkpoint=PATH [--config.x=y ...]

PATH is a Hugging Face checkpoint directory (config.json + *.safetensors + tokenizer) or a rankjax workdir
(its latest checkpoint, its tokenizer and the prompt format it was trained with). Writes DIR/samples.jsonl
(one graded sample per line), DIR/results.json and DIR/results.md; a relaunch with the same DIR draws only
the samples still missing.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from rankjax import cli, models
from rankjax.eval import harness, settings as settings_lib
from rankjax.train.restore import load_checkpoint

_FLAGS = {}


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines the command's flags in `flag_values`; only when run as a command (`cli.run`), so that importing this
  module (tests, notebooks, other tools with their own --config flag) defines none."""
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "Path to an eval config file (configs/eval_math.py).", lock_config=True, flag_values=flag_values)
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Directory for samples.jsonl, results.json, results.md.",
                                          flag_values=flag_values)
  _FLAGS["distributed"] = cli.define_distributed_flags(flag_values)
  flags.adopt_module_key_flags(cli.distributed, flag_values=flag_values)  # listed by --help
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)


def evaluate(config, workdir: str) -> dict:
  """Runs the evaluation of `config` (see configs/eval_math.py) into `workdir`; returns the results on
  process 0 ({} on the others)."""
  settings_lib.validate(config)
  mesh = models.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  ckpt = load_checkpoint(config.checkpoint, mesh, config.dtype)
  formatter = harness.make_formatter(ckpt.tokenizer, config.prompt, config.plain_template or ckpt.plain_template,
                                     ckpt.trained_format)
  data_dir = os.path.expanduser(config.data.tfds_data_dir) or harness.default_data_dir(workdir)
  problems = harness.load_all_problems(config, data_dir, ckpt.data_config)
  results = harness.run_eval(ckpt.model, ckpt.params, formatter, problems, config, mesh, out_dir=workdir,
                             extra_settings=ckpt.describe)
  if results:
    with open(os.path.join(workdir, "results.md"), encoding="utf-8") as f:
      print(f.read(), flush=True)
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  cli.init_distributed_from_flags(_FLAGS["distributed"])
  evaluate(_FLAGS["config"].value, _FLAGS["workdir"].value)


if __name__ == "__main__":
  cli.run(main, define_flags)
