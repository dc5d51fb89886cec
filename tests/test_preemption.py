"""Preemption and kills, with real signals sent to `python -m rankjax.main` subprocesses.

SIGTERM / SIGINT: the run finishes the step it is in, saves a checkpoint of that step, exits with status 75
and a relaunch ends bit-identical to an uninterrupted run (synthetic and file sources; a signal during the
first step and during a checkpoint write). SIGKILL at random moments, 10 times: the same.
"""

import os
import re
import signal
import time

import pytest

from experiments import fault_injection as fi
from rankjax.train import preemption
from rankjax.train.metrics_writer import read_metrics

pytestmark = pytest.mark.multiprocess
# 8 steps, a checkpoint every 4: a signal mostly lands between checkpoints.
STEPS = ("--config.total_steps=8", "--config.checkpoint_every=4")
OVERRIDES = (*fi.DEFAULT_OVERRIDES, *STEPS)


def _limit(timeouts):
  """One launch of the tiny run takes ~10 calibrations on a loaded 2-core machine (~25 when it compiles)."""
  return timeouts.calibrated(floor_s=240, calibrations=30)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, timeouts):
  """An uninterrupted run of OVERRIDES."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  _, _, rc = fi.timed_run(fi.command(workdir, OVERRIDES), workdir, workdir + ".log", _limit(timeouts).seconds)
  assert rc == 0, open(workdir + ".log").read()[-3000:]
  return workdir


def _signal_when(workdir, cmd, condition, sig, limit, env_extra=None, poll_s=0.0005):
  """Launches `cmd`, sends `sig` as soon as `condition()` holds, and returns (exit status, log text)."""
  log = workdir + ".log"
  proc = fi.launch(cmd, log) if not env_extra else _launch_with_env(cmd, log, env_extra)
  deadline = time.monotonic() + limit.seconds
  while not condition():
    if proc.poll() is not None:
      pytest.fail(f"the run exited ({proc.returncode}) before the moment to signal it:\n{open(log).read()[-3000:]}")
    if time.monotonic() > deadline:
      proc.kill()
      pytest.fail(limit.message("waiting for the moment to signal the run"))
    time.sleep(poll_s)
  proc.send_signal(sig)
  try:
    rc = proc.wait(timeout=limit.seconds)
  except Exception:
    proc.kill()
    raise
  return rc, open(log).read()


def _launch_with_env(cmd, log_path, extra):
  import subprocess  # noqa: PLC0415
  with open(log_path, "a", encoding="utf-8") as log:
    return subprocess.Popen(cmd, cwd=fi.ROOT, env={**fi.child_env(), **extra}, stdout=log, stderr=subprocess.STDOUT)


def _stopped_step(log: str) -> int:
  found = re.findall(r"stopped after step (\d+), checkpoint of step \1 saved", log)
  assert found, log[-3000:]
  return int(found[-1])


def _resume_and_compare(workdir, reference, limit, overrides=OVERRIDES):
  _, _, rc = fi.timed_run(fi.command(workdir, overrides), workdir, workdir + ".log", limit.seconds)
  assert rc == 0, open(workdir + ".log").read()[-3000:]
  assert fi.differences(reference, workdir) == []


def test_sigterm_during_the_first_step(tmp_path, reference, timeouts):
  workdir = str(tmp_path / "run")
  metrics = os.path.join(workdir, "metrics.jsonl")
  # metrics.jsonl is created just before the first step, which traces the step function (~2 s, more while
  # compiling): the signal lands inside it.
  rc, log = _signal_when(workdir, fi.command(workdir, OVERRIDES), lambda: os.path.exists(metrics), signal.SIGTERM,
                         _limit(timeouts), poll_s=0.005)
  assert rc == preemption.PREEMPTED_EXIT_CODE, log[-3000:]
  assert "SIGTERM received" in log
  assert _stopped_step(log) == 1
  assert fi.latest_checkpoint(workdir) == 1 and fi.logged_steps(workdir) == 1
  _resume_and_compare(workdir, reference, _limit(timeouts))


def test_sigterm_during_a_checkpoint_write(tmp_path, reference, timeouts):
  workdir = str(tmp_path / "run")
  every_step = (*OVERRIDES, "--config.checkpoint_every=1")  # a write is in flight most of the time
  rc, log = _signal_when(workdir, fi.command(workdir, every_step), lambda: fi.temporary_checkpoints(workdir),
                         signal.SIGTERM, _limit(timeouts))
  assert rc == preemption.PREEMPTED_EXIT_CODE, log[-3000:]
  step = _stopped_step(log)
  assert fi.latest_checkpoint(workdir) == step
  assert fi.temporary_checkpoints(workdir) == []  # the write in flight was committed before the exit
  _resume_and_compare(workdir, reference, _limit(timeouts), every_step)


def test_sigint_on_a_file_source_between_steps(tmp_path, shared_data, timeouts):
  tfds_dir = str(tmp_path / "tfds")
  synthetic_only = ("--config.data.synthetic", "--config.model.vocab_size", "--config.data.seq_len")
  files = (*(f for f in OVERRIDES if not f.startswith(synthetic_only)), "--config.data.source=gsm8k",
           "--config.data.split=train", f"--config.data.files.manual_dir={shared_data / 'gsm8k'}",
           f"--config.data.files.tfds_data_dir={tfds_dir}", "--config.data.seq_len=256", "--config.model.vocab_size=1024")
  workdir = str(tmp_path / "run")
  rc, log = _signal_when(workdir, fi.command(workdir, files), lambda: fi.logged_steps(workdir) >= 2, signal.SIGINT,
                         _limit(timeouts))
  assert rc == preemption.PREEMPTED_EXIT_CODE, log[-3000:]
  step = _stopped_step(log)
  assert 2 <= step < 8 and fi.latest_checkpoint(workdir) == step
  # Resumed exactness of the file source's data position is tests/test_train_file_source.py's; here: the relaunch
  # finishes with each step logged once.
  _, _, rc = fi.timed_run(fi.command(workdir, files), workdir, workdir + ".log", _limit(timeouts).seconds)
  assert rc == 0, open(workdir + ".log").read()[-3000:]
  assert [r["step"] for r in read_metrics(workdir)] == list(range(1, 9))
  assert fi.temporary_checkpoints(workdir) == []


@pytest.mark.slow
def test_ten_random_sigkills_resume_bit_identical(tmp_path, timeouts):
  lines = []
  summary = fi.run(str(tmp_path), kills=10, seed=0, limit_s=_limit(timeouts).seconds, report=lines.append)
  report = "\n".join(lines)
  assert summary["kills"] >= 10, report
  assert summary["differences"] == [], report
  print(report)
