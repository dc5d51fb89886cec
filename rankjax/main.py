"""Launches a run: python -m rankjax.main --config=configs/NAME.py --workdir=DIR [--config.key=value ...].

Relaunching with the same workdir resumes from the latest checkpoint.

Exit status: 0 when the run is complete; 75 (`rankjax.train.preemption.PREEMPTED_EXIT_CODE`) when SIGTERM,
SIGINT or a preemption notice stopped it after saving a checkpoint (relaunch to resume); 1 on an error.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rankjax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (get_config()).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config.json, metrics, checkpoints, results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-host: call jax.distributed.initialize() first. It finds the coordinator on "
    "TPU pods, SLURM and Open MPI; elsewhere give --coordinator_address, --num_processes and --process_id (or "
    "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (default: $JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (default: $JAX_PROCESS_ID).")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 100, "Multi-host: a process that sent no heartbeat for this long is declared dead, "
    "and every other process stops with an error (JAX's coordination service; JAX's default is 100 s).")
flags.mark_flags_as_required(["config", "workdir"])


def _env_int(name: str):
  value = os.environ.get(name)
  return int(value) if value else None


def _initialize_distributed() -> None:
  import jax
  num = _NUM_PROCESSES.value if _NUM_PROCESSES.value is not None else _env_int("JAX_NUM_PROCESSES")
  pid = _PROCESS_ID.value if _PROCESS_ID.value is not None else _env_int("JAX_PROCESS_ID")
  jax.distributed.initialize(_COORDINATOR.value, num, pid, heartbeat_timeout_seconds=_HEARTBEAT.value,
                             shutdown_timeout_seconds=_HEARTBEAT.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  if _DISTRIBUTED.value:
    _initialize_distributed()
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
  except Exception as e:
    if _DISTRIBUTED.value:
      _exit_after_failure(e)
    raise


def _exit_after_failure(error: Exception) -> None:
  """Multi-host: reports the failure and exits at once. A normal exit would wait in JAX's shutdown barrier for
  processes that may be dead, until the heartbeat timeout, and then abort."""
  import traceback

  import jax

  from rankjax.train import checkpointing
  traceback.print_exc()
  latest = (checkpointing.committed_steps(_WORKDIR.value) or [None])[-1]
  print(f"[rankjax] process {jax.process_index()} of {jax.process_count()}: the run failed "
        f"({type(error).__name__}). When another process died (a 'Connection closed by peer' or heartbeat error), "
        f"this is the consequence: see that process's log. Relaunch every process with the same command to "
        f"resume from the latest checkpoint (step {latest}).", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
