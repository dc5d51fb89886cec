"""Preemption: SIGTERM / SIGINT (and JAX's multi-host preemption notice) ask the loop to checkpoint and exit.

The first signal only records a request; the loop finishes the step it is in, saves a checkpoint at that step
on every host and raises `Preempted`, which `python -m rankjax.main` turns into exit status
`PREEMPTED_EXIT_CODE`. A second signal of the same kind gets the default action (SIGINT: KeyboardInterrupt,
SIGTERM: termination); a kill never leaves a checkpoint half-chosen, because Orbax commits a step by renaming
its temporary directory.

With several processes the hosts must stop at the same step: each step, every process contributes its flag to
a max over all devices (a one-scalar collective dispatched with the step), and every process reads the result
of the previous step's collective, so all see the same value at the same step and none waits for it.
"""

from __future__ import annotations

import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rankjax.rundir.exit_status import PREEMPTED_EXIT_CODE

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Training stopped on request (a signal or a preemption notice) after saving a checkpoint at `step`."""

  def __init__(self, step: int, reason: str, checkpoint_dir: str, during_startup: bool = False):
    self.step, self.reason, self.checkpoint_dir = step, reason, checkpoint_dir
    if during_startup:  # no step ran: nothing new to save
      where = (f"stopped during start-up, before step {step + 1}; the latest checkpoint is step {step}" if step
               else "stopped during start-up, before step 1; there is no checkpoint yet")
    else:
      where = f"stopped after step {step}, checkpoint of step {step} saved"
    super().__init__(f"preempted ({reason}): {where} in {checkpoint_dir}; relaunch the same command to resume "
                     f"(python -m rankjax.main exits with status {PREEMPTED_EXIT_CODE})")


class PreemptionWatch:
  """A context manager that turns SIGTERM / SIGINT into a stop request for the training loop.

  Handlers are installed only from the main thread (Python delivers signals there); elsewhere the watch sees
  only JAX's multi-host preemption notice. On exit the previous handlers are restored.
  """

  def __init__(self, signals=SIGNALS):
    self._signals = tuple(signals)
    self._previous: dict = {}
    self.reason = ""  # why a stop was requested first ("SIGTERM", "preemption notice", ...); "" = none
    self._gather = None
    self._pending = None  # the previous step's all-process flag (a device scalar)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self._signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
    return False

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.reason:  # a second signal: what the user gets without the watch
      signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      signal.raise_signal(signum)
      return
    self.reason = name
    print(f"[rankjax] {name} received: finishing the current step, then saving a checkpoint and exiting "
          f"(send it again to stop at once)", flush=True)

  @property
  def requested(self) -> bool:
    """True once this process received a stop request."""
    return bool(self.reason)

  def should_stop(self, step: int) -> bool:
    """Whether the loop stops after optimizer step `step` (1-based). Every process gets the same answer at the
    same step: single-process, this process's request; multi-process, any process's request as of the
    previous step (through a one-scalar collective) or JAX's preemption sync point."""
    if jax.process_count() == 1:
      return self.requested
    previous = self._pending
    self._pending = self._all_processes(self.requested)
    stop = previous is not None and bool(previous)
    if _reached_preemption_sync_point(step):
      self.reason = self.reason or "preemption notice"
      stop = True
    return stop

  def _all_processes(self, flag: bool):
    """Dispatches max(flag over processes) without waiting for it; returns a replicated device scalar."""
    devices = jax.devices()
    mesh = Mesh(np.asarray(devices), ("process_flags",))
    if self._gather is None:
      self._gather = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, P()))
    local = [jax.device_put(np.asarray([flag], np.int32), d) for d in jax.local_devices()]
    flags = jax.make_array_from_single_device_arrays((len(devices),), NamedSharding(mesh, P("process_flags")), local)
    return self._gather(flags)


def _reached_preemption_sync_point(step: int) -> bool:
  """JAX's multi-host preemption notice (TPU maintenance and the like), where the preemption service runs."""
  try:
    from jax.experimental import multihost_utils  # noqa: PLC0415
    return bool(multihost_utils.reached_preemption_sync_point(step))
  except (RuntimeError, AttributeError):  # no distributed client or no preemption service
    return False
