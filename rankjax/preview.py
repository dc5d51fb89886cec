"""The mask preview command (the library is rankjax.data.preview): packed training rows with the supervised span
marked, to check the loss mask by eye.

python -m rankjax.preview --config=configs/gsm8k_tiny.py [--n=3] [--workdir=DIR] [--config.data.seq_len=1024]
"""

from __future__ import annotations

import os
import sys
import tempfile

from absl import app, flags
from ml_collections import config_flags

from rankjax import cli
from rankjax.data import sources
from rankjax.data.preview import preview
from rankjax.models.errors import ConfigError

_FLAGS = {}


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines the command's flags in `flag_values`; only when run as a command (`cli.run`), so that importing this
  module (tests, notebooks, other tools with their own --config flag) defines none."""
  _FLAGS["config"] = config_flags.DEFINE_config_file("config", None, "run config file", lock_config=True,
                                                     flag_values=flag_values)
  _FLAGS["n"] = flags.DEFINE_integer("n", 3, "number of examples to show", lower_bound=1, flag_values=flag_values)
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", "", "run workdir (its tokenizer.json is used/trained); "
                                          "default: a temp dir", flag_values=flag_values)
  flags.mark_flags_as_required(["config"], flag_values=flag_values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _FLAGS["config"].value
  if "data" not in config or "model" not in config:
    raise ConfigError("the config has no config.data / config.model: give a run config (configs/*.py)")
  sources.validate_config(config.data)
  workdir = _FLAGS["workdir"].value or tempfile.mkdtemp(prefix="rankjax_preview_")
  os.makedirs(workdir, exist_ok=True)
  print(preview(config, _FLAGS["n"].value, workdir, color=sys.stdout.isatty()))


if __name__ == "__main__":
  cli.run(main, define_flags)
