"""Runs a sweep in this process: one training run per entry of a get_sweep(), each in WORKDIR/<name>, one after
another (`python -m rankjax.launch local` does the same with one process per run, or N at a time).

  python experiments/sweep.py --config=configs/synthetic_sft.py --workdir=workdirs/sweep \
      [--sweep=experiments/sweeps/schemes.py] [--config.total_steps=300 ...]

The runs are the config file's get_sweep() (see rankjax/sweeps.py), or --sweep's: a Python file whose
get_sweep() returns override dicts or (name, {dotted.key: value}) pairs, applied on top of the config and of any
--config.* flags. Every run is validated before the first one starts (a typo names the key and the file).
Relaunching resumes every unfinished run; finished runs are skipped.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rankjax import cli, sweeps  # noqa: E402
from rankjax.rundir import progress  # noqa: E402
from rankjax.train.config import with_overrides  # noqa: E402
from rankjax.train.loop import train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base config file.", lock_config=True)
_SWEEP = flags.DEFINE_string("sweep", None, "Python file with get_sweep() (default: the config file's).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory of the runs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config_path = config_flags.get_config_filename(flags.FLAGS["config"])
  runs = sweeps.load_sweep(config_path, _SWEEP.value)  # typos fail here, naming the key and the file
  configs = [(name, with_overrides(_CONFIG.value, overrides)) for name, overrides in runs]
  for name, config in configs:
    workdir = os.path.join(_WORKDIR.value, name)
    if progress.is_finished(workdir, config.total_steps):
      print(f"[sweep] {name}: finished, skipped", flush=True)
      continue
    print(f"[sweep] {name}", flush=True)
    train(config, workdir)


if __name__ == "__main__":
  app.run(cli.exit_on_config_error(main), flags_parser=cli.parse_flags)
