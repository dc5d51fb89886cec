"""Launches a training run: python -m rankjax.main --config=configs/NAME.py --workdir=DIR [--config.key=value ...].

A config with an `rl` group (configs/grpo_*.py) runs GRPO-style training from verifiable rewards
(`rankjax.rl.loop.train_rl`) instead of supervised fine-tuning.

Relaunching with the same workdir resumes from the latest checkpoint. The demo (configs/demo.py) is its own
command, `python -m rankjax.demo`; given its config, this command says so (exit status 2).

Exit status: 0 when the run is complete; 75 (`rankjax.train.preemption.PREEMPTED_EXIT_CODE`) when SIGTERM,
SIGINT or a preemption notice stopped it after saving a checkpoint (relaunch to resume); 2 for a bad flag or
config value (one line on stderr); 1 on an error.
"""

import os
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rankjax import cli
from rankjax.models.errors import ConfigError, InputError

_FLAGS = {}


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines the command's flags in `flag_values`; only when run as a command (`cli.run`), so that importing this
  module defines none."""
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "Path to a config file (get_config()).", lock_config=True, flag_values=flag_values)
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Directory for config.json, metrics, checkpoints, "
                                          "results.", flag_values=flag_values)
  _FLAGS["distributed"] = cli.define_distributed_flags(flag_values)
  flags.adopt_module_key_flags(cli.distributed, flag_values=flag_values)  # listed by --help
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)


def check_training_config(config, flag_args: list[str]) -> None:
  """Raises ConfigError for the demo's config (it has a `demo` field), naming the demo's command with the same
  flags `flag_args`: the demo is `python -m rankjax.demo`, this command runs one training run."""
  if "demo" in config:
    raise ConfigError("this is the demo's config (it has config.demo), and rankjax.main runs one training run: "
                      f"run the demo with python -m rankjax.demo {shlex.join(flag_args)}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  config = _FLAGS["config"].value
  check_training_config(config, sys.argv[1:])
  distributed = cli.init_distributed_from_flags(_FLAGS["distributed"])
  from rankjax.train import preemption
  if "rl" in config:  # GRPO-style training from verifiable rewards (rankjax/rl)
    from rankjax.rl.loop import train_rl as train
  else:
    from rankjax.train.loop import train
  try:
    train(config, _FLAGS["workdir"].value)
  except preemption.Preempted as e:
    print(f"[rankjax] {e}", flush=True)
    sys.exit(preemption.PREEMPTED_EXIT_CODE)
  except ConfigError:
    raise  # every process finds it before any collective: one line from cli.run
  except InputError as e:
    if distributed:  # a data error may be one process's own (its files): the others would wait in a collective
      import jax
      print(f"rankjax: process {jax.process_index()}: {e}", file=sys.stderr, flush=True)
      sys.stdout.flush()
      os._exit(2)
    raise  # one line from cli.run
  except Exception as e:
    if distributed:
      _exit_after_failure(e)
    raise


def _exit_after_failure(error: Exception) -> None:
  """Multi-host: reports the failure and exits at once. A normal exit would wait in JAX's shutdown barrier for
  processes that may be dead, until the heartbeat timeout, and then abort."""
  import traceback

  import jax

  from rankjax.train import checkpointing
  traceback.print_exc()
  latest = (checkpointing.committed_steps(_FLAGS["workdir"].value) or [None])[-1]
  print(f"[rankjax] process {jax.process_index()} of {jax.process_count()}: the run failed "
        f"({type(error).__name__}). When another process died (a 'Connection closed by peer' or heartbeat error), "
        f"this is the consequence: see that process's log. Relaunch every process with the same command to "
        f"resume from the latest checkpoint (step {latest}).", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)


if __name__ == "__main__":
  cli.run(main, define_flags)
