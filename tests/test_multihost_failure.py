"""Two `python -m rankjax.main --distributed` processes on CPU (gloo): a SIGTERM to one process stops both at the
same step with a checkpoint; a SIGKILL of one makes the other exit with a clear error within a bounded time, not
hang; a relaunch of both resumes. Only process 0 writes the run files; each process writes its data state."""

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from experiments import fault_injection as fi
from rankjax.train import preemption

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
HEARTBEAT_S = 10
OVERRIDES = (*fi.DEFAULT_OVERRIDES, "--config.total_steps=24", "--config.checkpoint_every=2",
             f"--heartbeat_timeout_s={HEARTBEAT_S}")


def _limit(timeouts):
  """Both processes start a JAX and compile (~25 calibrations each on a loaded 2-core machine)."""
  return timeouts.calibrated(floor_s=300, calibrations=60)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir: str) -> list[subprocess.Popen]:
  port = _free_port()
  procs = []
  for i in range(2):
    env = {**fi.child_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
           + " ".join(f for f in fi.child_env()["XLA_FLAGS"].split())}
    cmd = [*fi.command(workdir, OVERRIDES), "--distributed", f"--coordinator_address=localhost:{port}",
           "--num_processes=2", f"--process_id={i}"]
    with open(f"{workdir}.p{i}.log", "a", encoding="utf-8") as log:
      procs.append(subprocess.Popen(cmd, cwd=fi.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs


def _log(workdir: str, i: int) -> str:
  return open(f"{workdir}.p{i}.log", encoding="utf-8", errors="replace").read()


def _wait_for(condition, procs, limit, what):
  deadline = time.monotonic() + limit.seconds
  while not condition():
    if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
      for p in procs:
        p.kill()
      pytest.fail(f"{what}: " + ("; ".join(f"process {i} exited {p.returncode}" for i, p in enumerate(procs))
                                 if time.monotonic() <= deadline else limit.message(what)))
    time.sleep(0.05)


def _finish(procs, limit) -> list[int]:
  try:
    return [p.wait(timeout=limit.seconds) for p in procs]
  finally:
    for p in procs:
      p.kill()


def _relaunch_completes(workdir, limit):
  procs = _start(workdir)
  codes = _finish(procs, limit)
  assert codes == [0, 0], _log(workdir, 0)[-3000:] + _log(workdir, 1)[-3000:]
  steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == list(range(1, 25))
  data_states = [f for f in os.listdir(os.path.join(workdir, "checkpoints", "24", "data_iter")) if f.endswith(".json")]
  assert sorted(data_states) == ["process_0-of-2.json", "process_1-of-2.json"]
  assert fi.temporary_checkpoints(workdir) == []


def test_sigterm_to_one_process_stops_both_then_a_dead_process_stops_the_other(tmp_path, timeouts):
  """One run, two faults: SIGTERM to process 1 stops both at the same step with a checkpoint (status 75); after a
  relaunch, SIGKILL of process 1 makes process 0 exit within the bound; a last relaunch finishes the run."""
  workdir = str(tmp_path / "run")
  procs = _start(workdir)
  _wait_for(lambda: fi.logged_steps(workdir) >= 3, procs, _limit(timeouts), "waiting for 3 logged steps")
  procs[1].send_signal(signal.SIGTERM)
  codes = _finish(procs, _limit(timeouts))
  logs = [_log(workdir, i) for i in range(2)]
  assert codes == [preemption.PREEMPTED_EXIT_CODE] * 2, logs[0][-3000:] + logs[1][-3000:]
  stopped = [int(re.findall(r"stopped after step (\d+)", log)[-1]) for log in logs]
  assert stopped[0] == stopped[1] == fi.latest_checkpoint(workdir), stopped

  procs = _start(workdir)
  _wait_for(lambda: fi.logged_steps(workdir) >= stopped[0] + 3, procs, _limit(timeouts), "waiting for 3 more steps")
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  # The bound: immediately when process 0 is in a collective (gloo: "Connection closed by peer"), else the
  # coordination service's heartbeat timeout. A step of this tiny run takes well under a second.
  bound_s = (HEARTBEAT_S + 20) * timeouts.scale
  try:
    code = procs[0].wait(timeout=bound_s)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    pytest.fail(f"process 0 still ran {bound_s:.0f} s after process 1 died:\n{_log(workdir, 0)[-3000:]}")
  elapsed = time.monotonic() - killed_at
  log = _log(workdir, 0)
  assert code != 0, log[-3000:]
  # Whichever notices first: the gloo collective (rankjax's message, status 1) or JAX's coordination service
  # (it aborts the process: status -6).
  ours = "[rankjax] process 0 of 2: the run failed" in log and "Relaunch every process" in log
  jaxs = "Terminating process because the JAX distributed service detected fatal errors" in log
  assert ours or jaxs, log[-3000:]
  print(f"process 0 exited {elapsed:.1f} s after process 1 was killed (status {code})")
  _relaunch_completes(workdir, _limit(timeouts))
