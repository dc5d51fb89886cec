"""The multi-host start shared by every command that runs JAX computations: `--distributed` and the flags that
place this process, then `jax.distributed.initialize` (TPU pods, SLURM and Open MPI find the coordinator
themselves; CPU processes talk over gloo)."""

from __future__ import annotations

import os

from absl import flags


ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}
DEFAULT_HEARTBEAT_S = 100  # JAX's own default


def define_distributed_flags(flag_values: flags.FlagValues) -> dict[str, flags.FlagHolder]:
  """Defines --distributed, --coordinator_address, --num_processes, --process_id and --heartbeat_timeout_s in
  `flag_values`; returns their holders by name (for `init_distributed_from_flags`)."""
  return {
      "distributed": flags.DEFINE_bool(
          "distributed", False, "Multi-host: call jax.distributed.initialize() first. It finds the coordinator on "
          "TPU pods, SLURM and Open MPI; elsewhere give --coordinator_address, --num_processes and --process_id "
          "(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).", flag_values=flag_values),
      "coordinator_address": flags.DEFINE_string(
          "coordinator_address", None, "host:port of process 0's coordinator (default: $JAX_COORDINATOR_ADDRESS).",
          flag_values=flag_values),
      "num_processes": flags.DEFINE_integer(
          "num_processes", None, "Number of processes (default: $JAX_NUM_PROCESSES).", flag_values=flag_values),
      "process_id": flags.DEFINE_integer(
          "process_id", None, "This process's index (default: $JAX_PROCESS_ID).", flag_values=flag_values),
      "heartbeat_timeout_s": flags.DEFINE_integer(
          "heartbeat_timeout_s", DEFAULT_HEARTBEAT_S, "Multi-host: a process that sent no heartbeat for this long "
          "is declared dead, and every other process stops with an error (JAX's coordination service; JAX's "
          "default is 100 s).", flag_values=flag_values),
  }


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "").strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    from rankjax.models.errors import ConfigError  # noqa: PLC0415 (rankjax.models loads JAX: only on error)
    raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_S) -> None:
  """Joins this process to the multi-host JAX job. An argument left None comes from its environment variable
  (`ENV`), else from JAX's cluster detection. CPU collectives use gloo (without them a CPU process sees only
  its own devices)."""
  import jax  # noqa: PLC0415 (flag definition and parsing stay free of JAX)
  if heartbeat_timeout_s <= 0:
    from rankjax.models.errors import ConfigError  # noqa: PLC0415 (rankjax.models loads JAX: only on error)
    raise ConfigError(f"--heartbeat_timeout_s={heartbeat_timeout_s} must be > 0 (seconds)")
  address = coordinator_address or os.environ.get(ENV["coordinator_address"]) or None
  num = num_processes if num_processes is not None else _env_int(ENV["num_processes"])
  pid = process_id if process_id is not None else _env_int(ENV["process_id"])
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(address, num, pid, heartbeat_timeout_seconds=heartbeat_timeout_s,
                             shutdown_timeout_seconds=heartbeat_timeout_s)


def init_distributed_from_flags(holders: dict[str, flags.FlagHolder]) -> bool:
  """`init_distributed` with the values of the flags `define_distributed_flags` returned, when --distributed is
  set; returns whether it was."""
  if not holders["distributed"].value:
    return False
  init_distributed(holders["coordinator_address"].value, holders["num_processes"].value,
                   holders["process_id"].value, holders["heartbeat_timeout_s"].value)
  return True
