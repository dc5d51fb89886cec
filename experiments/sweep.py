"""Runs a sweep: one training run per entry of a sweep file, each in WORKDIR/<name>, sequentially.

  python experiments/sweep.py --config=configs/synthetic_sft.py --sweep=experiments/sweeps/schemes.py \
      --workdir=workdirs/schemes [--config.total_steps=300 ...]

A sweep file defines get_sweep() -> list of (name, {dotted.key: value}) overrides on top of the
config (and of any --config.* flags). Relaunching resumes every run; finished runs are skipped.
"""

import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rankjax.train.config import with_overrides  # noqa: E402
from rankjax.train.loop import train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base config file.", lock_config=True)
_SWEEP = flags.DEFINE_string("sweep", None, "Python file with get_sweep().")
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs.")
flags.mark_flags_as_required(["config", "sweep", "workdir"])


def load_sweep(path: str):
  if not os.path.exists(path):
    raise FileNotFoundError(f"sweep file not found: {path}")
  spec = importlib.util.spec_from_file_location("sweep", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_sweep()


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  runs = load_sweep(_SWEEP.value)
  configs = [(name, with_overrides(_CONFIG.value, overrides)) for name, overrides in runs]  # typos fail here
  for name, config in configs:
    print(f"[sweep] {name}", flush=True)
    train(config, os.path.join(_WORKDIR.value, name))


if __name__ == "__main__":
  app.run(main)
