"""GRPO on two `python -m rankjax.main --distributed` processes (gloo, 2 CPU devices each) equals one process with
4 devices: the same rollouts (identical requests on every process, per-sample keys), rewards graded on process 0
and broadcast, the same updates; only process 0 writes the run files."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from experiments import fault_injection as fi

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

CONFIG = '''
from rankjax.rl import config as rl_config
from rankjax.rl import rewards
from rankjax.train.config import load_config_file


def length_parity(completions, golds, pool):  # varies within groups, no grading needed
  return [float(len(c) % 2 == 0) for c in completions]


rewards.register("length_parity", length_parity)


def get_config():
  config = load_config_file("configs/synthetic_sft.py")
  with config.unlocked():
    config.rl = rl_config.default_config()
  return config
'''
OVERRIDES = (*fi.DEFAULT_OVERRIDES, "--config.total_steps=3", "--config.checkpoint_every=3",
             "--config.data.split=finetune", "--config.rl.prompts_per_step=4", "--config.rl.num_generations=4",
             "--config.rl.max_new_tokens=16", "--config.rl.rewards=length_parity", "--config.rl.grading_workers=1",
             "--config.rl.beta=0.05", "--config.rl.token_weight=entropy_top", "--config.optimizer.learning_rate=1e-2")
KEYS = ("reward/mean", "loss", "kl", "completion_length/mean", "clip_fraction", "tokens")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = fi.child_env()
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {env['XLA_FLAGS']}".strip()
  return env


def _rows(workdir) -> list[dict]:
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8")]


def test_two_processes_equal_one(tmp_path, timeouts):
  config = tmp_path / "grpo_tiny.py"
  config.write_text(CONFIG)
  limit = timeouts.calibrated(floor_s=300, calibrations=60)
  single = str(tmp_path / "single")
  cmd = [sys.executable, "-m", "rankjax.main", f"--config={config}", *OVERRIDES]
  done = subprocess.run([*cmd, f"--workdir={single}"], cwd=fi.ROOT, env=_env(4), capture_output=True, text=True,
                        timeout=limit.seconds)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  multi, port = str(tmp_path / "multi"), _free_port()
  procs = [subprocess.Popen([*cmd, f"--workdir={multi}", "--distributed", f"--coordinator_address=localhost:{port}",
                             "--num_processes=2", f"--process_id={i}"], cwd=fi.ROOT, env=_env(2),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=limit.seconds)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  a, b = _rows(single), _rows(multi)
  assert [r["step"] for r in b] == [1, 2, 3]
  for ra, rb in zip(a, b):
    for key in KEYS:
      np.testing.assert_allclose(rb[key], ra[key], rtol=2e-4, atol=1e-6, err_msg=f"step {ra['step']} {key}")
  assert a[-1]["reward/std"] > 0  # the rewards varied, so the updates did something
  assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["3"]
