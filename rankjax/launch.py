"""Launches a sweep (the `get_sweep()` of a config file, see rankjax/sweeps.py): every run is
`python -m rankjax.main --config=CONFIG --workdir=SWEEPDIR/NAME --config.k=v ...`, started by one of three launchers.

  python -m rankjax.launch local --config=configs/synthetic_sft.py --workdir=workdirs/sweep [--parallel=3]
  python -m rankjax.launch slurm --config=... --workdir=... --nodes=2 --gpus_per_node=8 --time=04:00:00 --partition=gpu
  python -m rankjax.launch tpu --config=... --workdir=... --tpu_name=NAME --zone=ZONE [--queued_resource \
      --accelerator_type=v5p-32 --runtime_version=v2-alpha-tpuv5]

Every launcher takes --dry-run (print every command, run nothing), --sweep=FILE (that file's get_sweep() instead
of the config file's) and --config.a.b=value overrides applied to every run (a run's own sweep value wins). Flags
are absl's, parsed by `rankjax.cli.parse_flags`: a bad one, or one the launcher does not read, is one line on
stderr and exit status 2.

local  runs one after another (output on the terminal), or --parallel=N at a time (each into
       SWEEPDIR/NAME/launch.log). A finished run (`rankjax.rundir.progress.is_finished`: a committed checkpoint
       of its total_steps, or without checkpoints a metrics row of it) is skipped: `[sweep] NAME: finished, skipped`;
       an unfinished one is relaunched and resumes. A run that exits 75 (preempted: SIGTERM/SIGINT, checkpoint
       saved) is reported and no new run starts. Exit status 1 if a run failed, 75 if one was preempted or not
       started, else 0.
slurm  writes SWEEPDIR/sweep.sbatch, one array task per unfinished run (finished ones are checked here, so
       SWEEPDIR must be on the cluster's shared file system), and submits it with `sbatch`. Each task runs its
       command through `srun` (with --distributed when --nodes > 1: jax.distributed finds SLURM's coordinator);
       `--signal=TERM@120` makes the run save a checkpoint and exit 75 before the time limit, and the task then
       requeues itself (`scontrol requeue`), so the run continues in a new allocation.
tpu    for a TPU VM (or pod slice): optionally creates a queued resource and waits until it is ACTIVE, copies the
       repository to every worker (`gcloud compute tpus tpu-vm scp`; from a copy without .git, .venv, workdirs,
       caches and build outputs), creates the venv there (`python3.11 -m venv .venv && .venv/bin/pip install -e .
       'jax[tpu]'`) and runs the runs one after another, each with `gcloud compute tpus tpu-vm ssh --worker=all
       --command 'cd REPO && .venv/bin/python -m rankjax.main --distributed ...'` (every path and override quoted
       for the remote shell). The workdirs are on the VMs (or a bucket), so finished runs are not checked here: a
       finished run restores its last checkpoint and exits at once.

The command lines are built by pure functions (local_jobs, slurm_script, tpu_commands); the functions that run
them pass argument lists to subprocess (never a shell).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types

from absl import flags

from rankjax import cli, sweeps
from rankjax.rundir import progress
from rankjax.rundir.exit_status import PREEMPTED_EXIT_CODE

PREEMPTED = PREEMPTED_EXIT_CODE  # what a preempted run exits with (checkpoint saved; relaunch to resume)
SYNC_EXCLUDE = (".git", ".venv", "venv", "workdirs", "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis",
                "*.egg-info", "build", "dist", ".ipynb_checkpoints")
SYNC_MARKER = ".rankjax-sync"  # in a staged copy; the launcher deletes only folders that hold it


def _print(*args) -> None:
  print(*args, flush=True)


# --------------------------------------------------------------------------------------------------------- local


@dataclasses.dataclass(frozen=True)
class Job:
  """One run to start locally: its name, argv and log file (None: the terminal)."""
  name: str
  argv: list
  log: str | None


def local_jobs(runs, config_path: str, sweep_dir: str, python: str, parallel: int):
  """([Job of each unfinished run], [names of finished runs])."""
  jobs, finished = [], []
  for run in runs:
    if progress.is_finished(run.workdir(sweep_dir), run.total_steps):
      finished.append(run.name)
      continue
    log = os.path.join(run.workdir(sweep_dir), "launch.log") if parallel > 1 else None
    jobs.append(Job(run.name, run.command(python, config_path, sweep_dir), log))
  return jobs, finished


def execute_local(jobs, parallel: int) -> dict[str, int | None]:
  """Runs `jobs`, `parallel` at a time; {name: exit status, None when not started}. A run that exits 75 (or
  SIGINT / SIGTERM of this process, which reach or are passed to the runs) stops new starts; the running ones
  are waited for (they save a checkpoint and exit)."""
  status: dict[str, int | None] = {j.name: None for j in jobs}
  queue, running = list(jobs), []  # running: (job, Popen)
  stopping = []

  def stop(reason: str) -> None:
    if not stopping:
      left = len(queue)
      _print(f"[sweep] {reason}: {left} run(s) not started" + ("; waiting for the running ones" if running else ""))
    stopping.append(reason)

  def on_term(signum, frame):
    del frame
    stop(signal.Signals(signum).name)
    for _, proc in running:
      proc.send_signal(signal.SIGTERM)

  in_main = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, on_term) if in_main else None
  interrupts = 0
  try:
    while (queue and not stopping) or running:
      try:
        while queue and not stopping and len(running) < parallel:
          job = queue.pop(0)
          running.append((job, _start(job)))
        still = []
        for job, proc in running:
          code = proc.poll()
          if code is None:
            still.append((job, proc))
            continue
          status[job.name] = code
          _report(job, code)
          if code == PREEMPTED:
            stop(f"{job.name} was preempted")
        running[:] = still
        if running:
          time.sleep(0.2)
      except KeyboardInterrupt:  # Ctrl-C reached the runs too (same process group): they save and exit 75
        interrupts += 1
        if interrupts > 1:
          raise
        stop("interrupted")
  finally:
    if in_main:
      signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
  return status


def _start(job: Job) -> subprocess.Popen:
  if job.log is None:
    _print(f"[sweep] {job.name}: {shlex.join(job.argv)}")
    return subprocess.Popen(job.argv)
  os.makedirs(os.path.dirname(job.log), exist_ok=True)
  with open(job.log, "a", encoding="utf-8") as log:
    log.write(f"[sweep] {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(job.argv)}\n")
    log.flush()
    _print(f"[sweep] {job.name}: started, log {job.log}")
    return subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT)


def _report(job: Job, code: int) -> None:
  where = f" (log {job.log})" if job.log else ""
  if code == 0:
    _print(f"[sweep] {job.name}: done")
  elif code == PREEMPTED:
    _print(f"[sweep] {job.name}: preempted (exit 75, checkpoint saved): relaunch the sweep to resume{where}")
  else:
    _print(f"[sweep] {job.name}: failed (exit {code}){where}")


def summarize(status: dict, finished: list) -> int:
  """Prints the summary line; the launcher's exit status (1: a run failed; 75: preempted or not started; 0)."""
  done = [n for n, c in status.items() if c == 0]
  preempted = [n for n, c in status.items() if c == PREEMPTED]
  failed = [n for n, c in status.items() if c not in (0, PREEMPTED, None)]
  not_started = [n for n, c in status.items() if c is None]
  parts = [f"{len(finished)} finished before (skipped)", f"{len(done)} done"]
  for label, names in (("preempted", preempted), ("failed", failed), ("not started", not_started)):
    if names:
      parts.append(f"{len(names)} {label} ({', '.join(names)})")
  _print(f"[sweep] {len(status) + len(finished)} runs: " + ", ".join(parts))
  return 1 if failed else PREEMPTED if preempted or not_started else 0


def _local_config_path(path: str) -> str:
  """`path` as given when it exists from here, else its path in the repository (as load_config_file finds it)."""
  return path if os.path.isfile(path) else os.path.abspath(sweeps.resolve_path(path))


def launch_local(args, runs) -> int:
  jobs, finished = local_jobs(runs, _local_config_path(args.config), args.workdir, args.python or sys.executable, args.parallel)
  how = "one at a time" if args.parallel == 1 else f"{args.parallel} at a time, logs in SWEEPDIR/NAME/launch.log"
  _print(f"[sweep] {len(runs)} runs of {args.config} in {args.workdir} ({how})"
         + (" -- dry run: nothing is started" if args.dry_run else ""))
  for name in finished:
    _print(f"[sweep] {name}: finished, skipped")
  if args.dry_run:
    for job in jobs:
      _print(shlex.join(job.argv))
    return 0
  return summarize(execute_local(jobs, args.parallel), finished)


# --------------------------------------------------------------------------------------------------------- slurm


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
  nodes: int
  gpus_per_node: int
  time: str
  partition: str
  job_name: str
  chdir: str  # the tasks' working directory (the config path and relative paths are relative to it)
  account: str = ""
  signal_s: int = 120


def slurm_script(runs, config_path: str, sweep_dir: str, python: str, opts: SlurmOptions) -> str:
  """The sbatch array script: task i runs runs[i] (`sweep_dir` absolute: it is read on the compute nodes)."""
  distributed = opts.nodes > 1
  header = [
      f"--job-name={opts.job_name}",
      f"--array=0-{len(runs) - 1}",
      f"--nodes={opts.nodes}",
      "--ntasks-per-node=1",  # one JAX process per node, on all its GPUs
      f"--gpus-per-node={opts.gpus_per_node}",
      f"--time={opts.time}",
      *([f"--partition={opts.partition}"] if opts.partition else []),
      *([f"--account={opts.account}"] if opts.account else []),
      f"--output={os.path.join(sweep_dir, 'slurm-%A_%a.out')}",
      "--open-mode=append",  # a requeued task appends to its log
      "--requeue",
      f"--signal=TERM@{opts.signal_s}",  # to the job step: rankjax saves a checkpoint and exits 75 in time
  ]
  lines = ["#!/bin/bash",
           f"# {len(runs)} runs of {config_path}, one per array task (written by python -m rankjax.launch slurm)."]
  lines += [f"#SBATCH {h}" for h in header]
  lines += ["", "# Each element of RUNS is one run's command line, quoted for the shell: eval parses it back into",
            "# exactly that argument list.", "NAMES=("]
  lines += [f"  {shlex.quote(run.name)}" for run in runs]
  lines += [")", "RUNS=("]
  lines += [f"  {shlex.quote(shlex.join(run.command(python, config_path, sweep_dir, distributed)))}" for run in runs]
  lines += [
      ")",
      "",
      f"cd {shlex.quote(opts.chdir)} || exit 1",
      'i="${SLURM_ARRAY_TASK_ID:?submit this script with sbatch (an array job)}"',
      'echo "[sweep] ${NAMES[$i]}: array task $i of job ${SLURM_ARRAY_JOB_ID:-?}, restart ${SLURM_RESTART_COUNT:-0}"',
      "trap 'echo \"[sweep] SIGTERM: the run saves a checkpoint and exits 75\"' TERM",
      'eval "srun --kill-on-bad-exit=1 ${RUNS[$i]}"',
      "status=$?",
      'if [ "$status" -eq 75 ]; then  # preempted or near the time limit: checkpoint saved, continue in a new allocation',
      '  echo "[sweep] ${NAMES[$i]}: preempted (exit 75), requeueing"',
      '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
      "fi",
      'exit "$status"',
      "",
  ]
  return "\n".join(lines)


def slurm_submit_command(script_path: str) -> list[str]:
  return ["sbatch", script_path]


def launch_slurm(args, runs) -> int:
  sweep_dir = os.path.abspath(args.workdir)
  todo = []
  for run in runs:
    if progress.is_finished(run.workdir(sweep_dir), run.total_steps):
      _print(f"[sweep] {run.name}: finished, skipped")
    else:
      todo.append(run)
  if not todo:
    _print(f"[sweep] all {len(runs)} runs are finished: nothing to submit")
    return 0
  opts = SlurmOptions(args.nodes, args.gpus_per_node, args.time, args.partition,
                      args.job_name or os.path.basename(os.path.normpath(sweep_dir)), args.chdir or os.getcwd(),
                      args.account, args.signal_s)
  config = os.path.abspath(sweeps.resolve_path(args.config))
  script = slurm_script(todo, config, sweep_dir, args.python or sys.executable, opts)
  path = os.path.join(sweep_dir, "sweep.sbatch")
  submit = slurm_submit_command(path)
  if args.dry_run:
    _print(f"[sweep] {len(todo)} of {len(runs)} runs -- dry run: {path} is not written, nothing is submitted")
    _print(f"# {path}:")
    sys.stdout.write(script)
    _print(shlex.join(submit))
    return 0
  os.makedirs(sweep_dir, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(script)
  _print(f"[sweep] {len(todo)} of {len(runs)} runs: {path}")
  _print(shlex.join(submit))
  return subprocess.run(submit, check=False).returncode


# ----------------------------------------------------------------------------------------------------------- tpu


@dataclasses.dataclass(frozen=True)
class TpuOptions:
  tpu_name: str
  zone: str
  project: str = ""
  repo_dir: str = "~/rankjax"
  queued_resource: bool = False
  accelerator_type: str = ""
  runtime_version: str = ""
  spot: bool = False
  vm_python: str = "python3.11"


def remote_path(path: str) -> str:
  """`path` quoted for the VM's shell, a leading `~/` left unquoted so that it expands to the home folder."""
  if path == "~":
    return "~"
  if path.startswith("~/"):
    return "~/" + shlex.quote(path[2:])
  return shlex.quote(path)


def _where(opts: TpuOptions) -> list[str]:
  return ["--zone", opts.zone, *(["--project", opts.project] if opts.project else [])]


def queued_resource_commands(opts: TpuOptions) -> tuple[list[str], list[str]]:
  """(create, describe): create the queued resource (id = node id = tpu_name); print its state."""
  create = ["gcloud", "compute", "tpus", "queued-resources", "create", opts.tpu_name, "--node-id", opts.tpu_name,
            *_where(opts), "--accelerator-type", opts.accelerator_type, "--runtime-version", opts.runtime_version,
            *(["--spot"] if opts.spot else [])]
  describe = ["gcloud", "compute", "tpus", "queued-resources", "describe", opts.tpu_name, *_where(opts),
              "--format=value(state.state)"]
  return create, describe


def ssh_command(opts: TpuOptions, command: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", opts.tpu_name, *_where(opts), "--worker=all",
          "--command", command]


def sync_command(opts: TpuOptions, staged_repo: str) -> list[str]:
  """scp of the staged copy (a folder named like REPO_DIR's last part) into REPO_DIR's parent on every worker: scp
  copies a folder INTO an existing target folder, so copying to REPO_DIR itself would nest on a relaunch."""
  parent = os.path.dirname(opts.repo_dir.rstrip("/")) or "~"
  parent = parent + "/" if parent == "~" else parent
  return ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", *_where(opts), "--worker=all", staged_repo,
          f"{opts.tpu_name}:{parent}"]


def setup_command(opts: TpuOptions) -> list[str]:
  return ssh_command(opts, f"cd {remote_path(opts.repo_dir)} && {shlex.quote(opts.vm_python)} -m venv .venv && "
                           f".venv/bin/pip install -e . {shlex.quote('jax[tpu]')}")


def run_command(opts: TpuOptions, run, config_path: str, sweep_dir: str) -> list[str]:
  argv = run.command(".venv/bin/python", config_path, sweep_dir, distributed=True)
  return ssh_command(opts, f"cd {remote_path(opts.repo_dir)} && {shlex.join(argv)}")


def tpu_commands(runs, config_path: str, sweep_dir: str, opts: TpuOptions, staged_repo: str) -> list[list[str]]:
  """Every gcloud command in order: [queued-resource create,] scp, venv setup, one ssh per run. (The launcher also
  polls the queued resource's state after the create.)"""
  cmds = [queued_resource_commands(opts)[0]] if opts.queued_resource else []
  cmds += [sync_command(opts, staged_repo), setup_command(opts)]
  cmds += [run_command(opts, run, config_path, sweep_dir) for run in runs]
  return cmds


def default_stage_dir(local_repo: str) -> str:
  digest = hashlib.sha1(os.path.abspath(local_repo).encode()).hexdigest()[:8]
  return os.path.join(tempfile.gettempdir(), f"rankjax-sync-{digest}")


def stage_repo(local_repo: str, staged: str, exclude=SYNC_EXCLUDE) -> None:
  """Copies `local_repo` to `staged` without `exclude` (glob patterns matched at every level)."""
  if os.path.exists(staged):
    if not os.path.exists(os.path.join(staged, SYNC_MARKER)):
      raise FileExistsError(f"{staged} exists and is not a copy this launcher made (no {SYNC_MARKER}): remove it or "
                            "choose another --stage_dir")
    shutil.rmtree(staged)
  shutil.copytree(local_repo, staged, ignore=shutil.ignore_patterns(*exclude), symlinks=True)
  with open(os.path.join(staged, SYNC_MARKER), "w", encoding="utf-8") as f:
    f.write(f"a copy of {os.path.abspath(local_repo)} for python -m rankjax.launch tpu\n")


def repo_relative(path: str, local_repo: str) -> str:
  """The config path inside the synced repository (relative to it); ValueError for a file outside it."""
  full = os.path.abspath(sweeps.resolve_path(path))
  rel = os.path.relpath(full, os.path.abspath(local_repo))
  if rel.startswith(os.pardir):
    raise ValueError(f"{path} is outside {local_repo}, so it is not copied to the TPU VMs")
  return rel


def wait_active(describe: list[str], poll_s: float, wait_s: float = 0.0) -> None:
  """Polls the queued resource's state until ACTIVE (RuntimeError when it fails, or after `wait_s` > 0 s)."""
  last, start = None, time.monotonic()
  while True:
    out = subprocess.run(describe, capture_output=True, text=True, check=False)
    lines = out.stdout.strip().splitlines()
    state = lines[-1].strip() if out.returncode == 0 and lines else f"unknown ({out.stderr.strip()[-200:]})"
    if state != last:
      _print(f"[sweep] queued resource: {state}")
      last = state
    if state == "ACTIVE":
      return
    if state in ("FAILED", "SUSPENDED", "SUSPENDING"):
      raise RuntimeError(f"the queued resource is {state}: {shlex.join(describe)}")
    if wait_s and time.monotonic() - start > wait_s:
      raise RuntimeError(f"the queued resource is not ACTIVE after {wait_s:g} s ({state}): relaunch to wait again")
    time.sleep(poll_s)


def launch_tpu(args, runs) -> int:
  opts = TpuOptions(args.tpu_name, args.zone, args.project, args.repo_dir, args.queued_resource,
                    args.accelerator_type, args.runtime_version, args.spot, args.vm_python)
  config = repo_relative(args.config, args.local_repo)
  stage_dir = args.stage_dir or default_stage_dir(args.local_repo)
  staged = os.path.join(stage_dir, os.path.basename(opts.repo_dir.rstrip("/")) or "rankjax")
  cmds = tpu_commands(runs, config, args.workdir, opts, staged)
  create, describe = queued_resource_commands(opts)
  n_pre = 3 if opts.queued_resource else 2
  if args.dry_run:
    _print(f"[sweep] {len(runs)} runs of {config} on {opts.tpu_name} -- dry run: nothing is copied or started")
    _print(f"# sync: {staged} is a copy of {os.path.abspath(args.local_repo)} without {' '.join(SYNC_EXCLUDE)}")
    for i, cmd in enumerate(cmds):
      _print(shlex.join(cmd))
      if opts.queued_resource and i == 0:
        _print(f"# then, until it prints ACTIVE: {shlex.join(describe)}")
    return 0
  if opts.queued_resource:
    if subprocess.run(describe, capture_output=True, text=True, check=False).returncode == 0:
      _print(f"[sweep] queued resource {opts.tpu_name} exists")
    else:
      _print(shlex.join(create))
      if (code := subprocess.run(create, check=False).returncode) != 0:
        _print(f"[sweep] creating the queued resource failed (exit {code})")
        return code
    wait_active(describe, args.poll_s, args.wait_s)
  os.makedirs(stage_dir, exist_ok=True)
  stage_repo(args.local_repo, staged)
  for cmd in cmds[n_pre - 2:n_pre]:  # sync, setup
    _print(shlex.join(cmd))
    if (code := subprocess.run(cmd, check=False).returncode) != 0:
      _print(f"[sweep] {cmd[4]} failed (exit {code})")
      return code
  status = {}
  for run, cmd in zip(runs, cmds[n_pre:]):
    _print(f"[sweep] {run.name}: {shlex.join(cmd)}")
    code = subprocess.run(cmd, check=False).returncode
    status[run.name] = code
    _report(Job(run.name, cmd, None), code)
    if code in (PREEMPTED, 255):  # preempted, or ssh could not reach the VMs: stop here
      if code == 255:
        _print("[sweep] ssh failed (exit 255): the TPU VMs are unreachable")
      break
  for run in runs:
    status.setdefault(run.name, None)
  return summarize(status, [])


# ----------------------------------------------------------------------------------------------------------- cli


LAUNCHERS = ("local", "slurm", "tpu")
COMMON_FLAGS = ("config", "workdir", "sweep", "dry_run")
LAUNCHER_FLAGS = {  # the flags each launcher reads besides COMMON_FLAGS; giving another one is an error
    "local": ("parallel", "python"),
    "slurm": ("nodes", "gpus_per_node", "time", "partition", "account", "job_name", "python", "chdir", "signal_s"),
    "tpu": ("tpu_name", "zone", "project", "queued_resource", "accelerator_type", "runtime_version", "spot",
            "repo_dir", "vm_python", "local_repo", "stage_dir", "poll_s", "wait_s"),
}
REQUIRED_FLAGS = {"local": ("config", "workdir"), "slurm": ("config", "workdir"),
                  "tpu": ("config", "workdir", "tpu_name", "zone")}


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines every launcher's flags in `flag_values` (`LAUNCHER_FLAGS` says which launcher reads which); the
  hyphenated spellings --dry-run, --gpus-per-node and --job-name are aliases."""
  f = flag_values
  flags.DEFINE_string("config", None, "config file with get_config() and get_sweep()", flag_values=f)
  flags.DEFINE_string("workdir", None, "the sweep's folder: each run in WORKDIR/NAME", flag_values=f)
  flags.DEFINE_string("sweep", None, "a file whose get_sweep() replaces the config file's", flag_values=f)
  flags.DEFINE_bool("dry_run", False, "print every command; run, write and submit nothing", flag_values=f)
  # local
  flags.DEFINE_integer("parallel", 1, "local: runs at a time (1: one after another)", lower_bound=1, flag_values=f)
  flags.DEFINE_string("python", None, "local, slurm: the runs' Python (default: this one)", flag_values=f)
  # slurm
  flags.DEFINE_integer("nodes", 1, "slurm: nodes per run", lower_bound=1, flag_values=f)
  flags.DEFINE_integer("gpus_per_node", 8, "slurm: GPUs per node", lower_bound=0, flag_values=f)
  flags.DEFINE_string("time", "04:00:00", "slurm: each task's time limit", flag_values=f)
  flags.DEFINE_string("partition", "", "slurm: the partition", flag_values=f)
  flags.DEFINE_string("account", "", "slurm: the account", flag_values=f)
  flags.DEFINE_string("job_name", "", "slurm: the job's name (default: the sweep folder's name)", flag_values=f)
  flags.DEFINE_string("chdir", "", "slurm: the tasks' working folder (default: the current one)", flag_values=f)
  flags.DEFINE_integer("signal_s", 120, "slurm: SIGTERM this many seconds before the time limit", flag_values=f)
  # tpu
  flags.DEFINE_string("tpu_name", None, "tpu: the TPU VM or queued resource", flag_values=f)
  flags.DEFINE_string("zone", None, "tpu: its zone", flag_values=f)
  flags.DEFINE_string("project", "", "tpu: the gcloud project", flag_values=f)
  flags.DEFINE_bool("queued_resource", False, "tpu: first create a queued resource named tpu_name", flag_values=f)
  flags.DEFINE_string("accelerator_type", "", "tpu: e.g. v5p-32 (with --queued_resource)", flag_values=f)
  flags.DEFINE_string("runtime_version", "", "tpu: e.g. v2-alpha-tpuv5 (with --queued_resource)", flag_values=f)
  flags.DEFINE_bool("spot", False, "tpu: a spot queued resource", flag_values=f)
  flags.DEFINE_string("repo_dir", "~/rankjax", "tpu: the repository on the VMs", flag_values=f)
  flags.DEFINE_string("vm_python", "python3.11", "tpu: the VMs' Python that creates the venv", flag_values=f)
  flags.DEFINE_string("local_repo", sweeps.ROOT, "tpu: the repository copied to the VMs", flag_values=f)
  flags.DEFINE_string("stage_dir", "", "tpu: where the copy to sync is made (default: a temp folder)", flag_values=f)
  flags.DEFINE_float("poll_s", 30.0, "tpu: seconds between queued-resource state checks", flag_values=f)
  flags.DEFINE_float("wait_s", 0.0, "tpu: give up waiting for the queued resource after this many seconds (0: wait "
                     "as long as it takes)", flag_values=f)
  for alias, name in (("dry-run", "dry_run"), ("gpus-per-node", "gpus_per_node"), ("job-name", "job_name")):
    flags.DEFINE_alias(alias, name, flag_values=f)


def usage(flag_values: flags.FlagValues) -> str:
  """The text of --help: this module's docstring and every flag."""
  return f"{__doc__}\nFlags:\n{flag_values.get_help()}\n"


def parse_args(argv: list[str]) -> tuple[types.SimpleNamespace, list[str]]:
  """(the launcher's name and flag values as attributes, the --config.a.b=value overrides) of `argv` (without the
  program name), parsed by `cli.parse_flags`; a bad flag, a flag the launcher does not read, a missing one, or
  anything else is one line on stderr and exit status 2."""
  overrides = [a for a in argv if a.startswith("--config.")]
  values = flags.FlagValues()
  define_flags(values)
  if any(a in ("--help", "-h", "--helpfull") for a in argv):
    print(usage(values), flush=True)
    sys.exit(0)
  rest = cli.parse_flags(["python -m rankjax.launch", *(a for a in argv if not a.startswith("--config."))],
                         config_flag=None, flag_values=values)[1:]
  if len(rest) != 1 or rest[0] not in LAUNCHERS:
    cli.exit_with_usage_error(f"give one launcher, {' / '.join(LAUNCHERS)}, then its flags (got {rest}); overrides "
                              "for every run are written --config.a.b=value")
  launcher = rest[0]
  given = {name for name in values if "-" not in name and values[name].present}  # an alias counts as its flag
  readable = {*COMMON_FLAGS, *LAUNCHER_FLAGS[launcher]}
  foreign = [f"--{name}" for name in sorted(given - readable)]
  if foreign:
    cli.exit_with_usage_error(f"{', '.join(foreign)} does not apply to the {launcher} launcher (it reads "
                              f"{', '.join('--' + n for n in sorted(readable))})")
  missing = [f"--{name}" for name in REQUIRED_FLAGS[launcher] if values[name].value is None]
  if missing:
    cli.exit_with_usage_error(f"the {launcher} launcher needs {', '.join(missing)}")
  if launcher == "tpu" and values.queued_resource and not (values.accelerator_type and values.runtime_version):
    cli.exit_with_usage_error("--queued_resource needs --accelerator_type and --runtime_version")
  args = types.SimpleNamespace(launcher=launcher, **{name: values[name].value for name in values if "-" not in name})
  return args, overrides


def main(argv=None) -> int:
  """The command; returns the exit status (0; 1 when a run failed; 75 when one was preempted or not started; 2 for
  a bad flag, override or sweep)."""
  args, extra = parse_args(sys.argv[1:] if argv is None else list(argv))
  try:
    sweeps.split_config_args(extra)
  except ValueError as e:
    cli.exit_with_usage_error(str(e))
  try:
    runs = sweeps.plan(args.config, args.sweep, extra)
  except (ValueError, FileNotFoundError) as e:
    print(f"[sweep] error: {e}", file=sys.stderr, flush=True)
    return 2
  return {"local": launch_local, "slurm": launch_slurm, "tpu": launch_tpu}[args.launcher](args, runs)


if __name__ == "__main__":
  sys.exit(main())
