"""Launches a run: python -m rankjax.main --config=configs/NAME.py --workdir=DIR [--config.key=value ...].

Relaunching with the same workdir resumes from the latest checkpoint.

Exit status: 0 when the run is complete; 75 (`rankjax.train.preemption.PREEMPTED_EXIT_CODE`) when SIGTERM,
SIGINT or a preemption notice stopped it after saving a checkpoint (relaunch to resume); 1 on an error.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (get_config()).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config.json, metrics, checkpoints, results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-host: call jax.distributed.initialize() first (it finds the coordinator on "
    "TPU pods, SLURM and Open MPI, or from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  if _DISTRIBUTED.value:
    import jax
    jax.distributed.initialize()
  config = _CONFIG.value
  from rankjax.train import preemption
  try:
    if config.job == "demo":
      from rankjax import demo
      demo.run(config, _WORKDIR.value)
    else:
      from rankjax.train.loop import train
      train(config, _WORKDIR.value)
  except preemption.Preempted as e:
    print(f"[rankjax] {e}", flush=True)
    sys.exit(preemption.PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
  app.run(main)
