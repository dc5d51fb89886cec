"""Kills a training run with SIGKILL at random moments, relaunches it each time, and checks that the result is
the uninterrupted run's, bit for bit: parameters, optimizer state, data-iterator state and metrics.jsonl
(each logged step exactly once, every value except the wall-clock ones equal).

    python experiments/fault_injection.py --workdir=/tmp/fi --kills=50 --seed=0 [--config.total_steps=80 ...]

Each kill first picks a phase at random, then a random moment inside it:
  start-up          a time drawn uniformly from [0, the reference run's start-up time] after launch, or the
                    launch's first new logged step if that comes sooner (a relaunch starts faster);
  step              after the run has logged a step, a delay drawn from [0, 4 step times];
  checkpoint write  while a temporary checkpoint directory (`<step>.orbax-checkpoint-tmp-*`) exists, after a
                    delay drawn from [0, 20 ms].
After the last kill the run is relaunched until it completes. Orbax writes a step into a temporary directory
and renames it when complete, so a half-written checkpoint is never restored; the next launch removes it.
Prints one line per kill and a summary; exits 1 if the runs differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from rankjax.rundir import layout, progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("start-up", "step", "checkpoint write")
WALL_CLOCK_KEYS = ("tokens_per_second", "model_tflops_per_device", "mfu")
# A tiny run: 2 layers of width 32, a checkpoint every 2 steps (3 kept), a metrics row every step.
DEFAULT_OVERRIDES = (
    "--config.model.vocab_size=400", "--config.model.hidden_size=32", "--config.model.num_layers=2",
    "--config.model.num_heads=4", "--config.model.num_kv_heads=2", "--config.model.mlp_dim=64",
    "--config.data.synthetic.num_pretrain=300", "--config.data.synthetic.num_finetune=200",
    "--config.data.synthetic.num_eval=20", "--config.data.seq_len=96", "--config.data.batch_size=8",
    "--config.total_steps=40", "--config.log_every=1", "--config.checkpoint_every=2", "--config.keep_checkpoints=3",
    "--config.progress=False")


@dataclasses.dataclass
class Kill:
  """One SIGKILL: when (seconds after launch), in which phase, and the run's progress on disk at that moment."""
  index: int
  phase: str
  after_s: float
  logged_steps: int
  latest_checkpoint: int | None
  killed: bool  # False when the process had already exited (it completed or failed) before the kill


def command(workdir: str, overrides=DEFAULT_OVERRIDES, config: str = "configs/synthetic_sft.py") -> list[str]:
  """The `python -m rankjax.main` command line of the run."""
  return [sys.executable, "-m", "rankjax.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def child_env() -> dict:
  """The environment of the runs: one CPU device, offline."""
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
  return env


def launch(cmd: list[str], log_path: str) -> subprocess.Popen:
  """Starts `cmd` in the repository root, its stdout and stderr appended to `log_path`."""
  log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed by the child's exit; the parent keeps no handle)
  try:
    return subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT)
  finally:
    log.close()


def logged_steps(workdir: str) -> int:
  """Complete rows in WORKDIR/metrics.jsonl."""
  try:
    with open(layout.metrics_path(workdir), encoding="utf-8") as f:
      return sum(1 for line in f if line.endswith("\n"))
  except FileNotFoundError:
    return 0


def temporary_checkpoints(workdir: str) -> list[str]:
  """Checkpoint directories not yet committed (being written, or left by a kill)."""
  return glob.glob(os.path.join(layout.checkpoints_dir(workdir), "*.orbax-checkpoint-tmp*"))


def latest_checkpoint(workdir: str) -> int | None:
  """The latest committed step directory's step."""
  return max(progress.committed_steps(workdir), default=None)


def _wait_until(condition, proc: subprocess.Popen, deadline: float, poll_s: float = 0.002) -> bool:
  while time.monotonic() < deadline and proc.poll() is None:
    if condition():
      return True
    time.sleep(poll_s)
  return False


def kill_once(index: int, cmd: list[str], workdir: str, phase: str, rng: np.random.Generator, startup_s: float,
              step_s: float, log_path: str, limit_s: float) -> Kill:
  """Launches the run and SIGKILLs it at a random moment of `phase`."""
  stale = set(temporary_checkpoints(workdir))  # left by an earlier kill; this launch removes them
  start = time.monotonic()
  proc = launch(cmd, log_path)
  deadline = start + limit_s
  if phase == "start-up":
    # A relaunch starts faster than the reference (its tokenizer and data are ready): stop waiting at its first
    # new logged step, so the kill stays in start-up and the run does not race through its remaining steps.
    before = logged_steps(workdir)
    _wait_until(lambda: logged_steps(workdir) > before, proc, start + rng.uniform(0, startup_s), poll_s=0.005)
  elif phase == "step":
    before = logged_steps(workdir)
    if _wait_until(lambda: logged_steps(workdir) > before, proc, deadline):
      _wait_until(lambda: False, proc, time.monotonic() + rng.uniform(0, 4 * step_s))
  else:
    if _wait_until(lambda: set(temporary_checkpoints(workdir)) - stale, proc, deadline, poll_s=0.0005):
      _wait_until(lambda: False, proc, time.monotonic() + rng.uniform(0, 0.02))
  kill = Kill(index, phase, time.monotonic() - start, logged_steps(workdir), latest_checkpoint(workdir),
              killed=proc.poll() is None)
  if kill.killed:
    proc.send_signal(signal.SIGKILL)
  proc.wait()
  return kill


def timed_run(cmd: list[str], workdir: str, log_path: str, limit_s: float) -> tuple[float, float, int]:
  """Runs `cmd` to completion: (seconds to the first logged step, seconds in all, exit status)."""
  start = time.monotonic()
  proc = launch(cmd, log_path)
  _wait_until(lambda: logged_steps(workdir) > 0, proc, start + limit_s, poll_s=0.01)
  first = time.monotonic() - start
  try:
    rc = proc.wait(timeout=max(1.0, start + limit_s - time.monotonic()))
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    raise TimeoutError(f"{' '.join(cmd)} ran past {limit_s:.0f} s (log: {log_path})") from None
  return first, time.monotonic() - start, rc


def _restore_items(workdir: str, step: int) -> dict:
  import orbax.checkpoint as ocp  # noqa: PLC0415
  out = {}
  for item in ("params", "opt_state"):
    path = os.path.join(layout.checkpoints_dir(workdir), str(step), item)
    with ocp.StandardCheckpointer() as ckpt:
      out[item] = ckpt.restore(path)
  data = glob.glob(os.path.join(layout.checkpoints_dir(workdir), str(step), "data_iter", "*.json"))
  out["data_iter"] = {os.path.basename(p): open(p, encoding="utf-8").read() for p in sorted(data)}
  return out


def _flat(tree, prefix="") -> dict:
  if isinstance(tree, dict):
    return {k: v for key in sorted(tree) for k, v in _flat(tree[key], f"{prefix}/{key}").items()}
  if isinstance(tree, (list, tuple)):
    return {k: v for i, x in enumerate(tree) for k, v in _flat(x, f"{prefix}/{i}").items()}
  return {prefix: np.asarray(tree)}


def differences(reference: str, candidate: str) -> list[str]:
  """What differs between two finished runs' workdirs (empty when bit-identical): the latest checkpoint's
  params, optimizer state and data-iterator state, and metrics.jsonl without its wall-clock fields."""
  out = []
  ref_step, cand_step = latest_checkpoint(reference), latest_checkpoint(candidate)
  if ref_step != cand_step:
    return [f"latest checkpoint: step {ref_step} vs {cand_step}"]
  a, b = _restore_items(reference, ref_step), _restore_items(candidate, cand_step)
  for item in ("params", "opt_state"):
    fa, fb = _flat(a[item]), _flat(b[item])
    if fa.keys() != fb.keys():
      out.append(f"{item}: different leaves")
      continue
    out += [f"{item}{k}: not bit-identical" for k in fa
            if fa[k].dtype != fb[k].dtype or fa[k].tobytes() != fb[k].tobytes()]
  if a["data_iter"] != b["data_iter"]:
    out.append("data iterator state differs")
  rows = [progress.read_metrics(d) for d in (reference, candidate)]
  steps = [[r["step"] for r in rs] for rs in rows]
  if steps[0] != steps[1]:
    out.append(f"metrics.jsonl steps: {steps[0]} vs {steps[1]}")
  else:
    for ra, rb in zip(*rows):
      drop = lambda r: {k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS}  # noqa: E731
      if drop(ra) != drop(rb):
        out.append(f"metrics.jsonl step {ra['step']}: {drop(ra)} vs {drop(rb)}")
  left = temporary_checkpoints(candidate)
  if left:
    out.append(f"temporary checkpoint directories left behind: {left}")
  return out


def run(workdir: str, kills: int, seed: int, overrides=DEFAULT_OVERRIDES, limit_s: float = 600.0,
        report=print) -> dict:
  """The whole experiment in WORKDIR/reference and WORKDIR/killed; returns a summary (kills, timings,
  differences)."""
  rng = np.random.default_rng(seed)
  reference, killed = os.path.join(workdir, "reference"), os.path.join(workdir, "killed")
  os.makedirs(workdir, exist_ok=True)
  t0 = time.monotonic()
  startup_s, total_s, rc = timed_run(command(reference, overrides), reference, os.path.join(workdir, "reference.log"),
                                     limit_s)
  if rc:
    raise RuntimeError(f"the reference run failed with status {rc}: see {workdir}/reference.log")
  steps = max(1, logged_steps(reference))
  step_s = max(1e-3, (total_s - startup_s) / steps)
  report(f"reference: {steps} steps, start-up {startup_s:.1f} s, {step_s * 1e3:.0f} ms per step")
  log = os.path.join(workdir, "killed.log")
  done = []
  for i in range(kills):
    phase = PHASES[int(rng.integers(len(PHASES)))]
    kill = kill_once(i, command(killed, overrides), killed, phase, rng, startup_s, step_s, log, limit_s)
    done.append(kill)
    report(f"kill {i + 1}/{kills}: {phase:<16} at {kill.after_s:5.2f} s, {kill.logged_steps} steps logged, "
           f"latest checkpoint {kill.latest_checkpoint}{'' if kill.killed else ' (the process had already exited)'}")
  relaunches = 0
  while True:
    relaunches += 1
    _, _, rc = timed_run(command(killed, overrides), killed, log, limit_s)
    if rc == 0 or relaunches >= 3:
      break
  if rc:
    raise RuntimeError(f"the relaunch after the kills failed with status {rc}: see {log}")
  diffs = differences(reference, killed)
  summary = {"kills": sum(k.killed for k in done), "by_phase": {p: sum(k.killed and k.phase == p for k in done)
                                                                 for p in PHASES},
             "seconds": time.monotonic() - t0, "differences": diffs, "kill_log": [dataclasses.asdict(k) for k in done]}
  report(f"{summary['kills']} kills survived ({summary['by_phase']}) in {summary['seconds']:.0f} s; "
         + ("final params, optimizer state, data state and metrics are bit-identical to the uninterrupted run"
            if not diffs else f"{len(diffs)} differences: {diffs[:5]}"))
  return summary


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--limit_s", type=float, default=600.0, help="time limit of each launch")
  args, extra = parser.parse_known_args(argv)
  summary = run(args.workdir, args.kills, args.seed, (*DEFAULT_OVERRIDES, *extra), args.limit_s)
  with open(os.path.join(args.workdir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  return 1 if summary["differences"] else 0


if __name__ == "__main__":
  sys.exit(main())
