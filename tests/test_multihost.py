"""Two real JAX processes (jax.distributed over localhost, gloo CPU collectives, 2 devices each)
against one process: the per-host Grain batches, the assembled global batch and one train step.

Marked `multiprocess`: `make test` runs these after the parallel part, alone (on 2 cores, 2 workers
next to another xdist worker's compiles ran past a fixed 120 s limit). The workers' limit is derived
from the measured time of the same work in this process (see `run`).
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from rankjax import models
from tests import multihost_worker as worker

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
NUM_PROCESSES = 2
FLOOR_S = 600  # the workers' time limit is at least this (they take ~30-75 s alone on 2 cores)
# A jaxlib without gloo CPU collectives: skip (any other worker failure fails the test).
UNAVAILABLE = re.compile(r"Multiprocess computations aren't implemented on the CPU backend"
                         r"|has no attribute 'make_gloo_tcp_collectives'"
                         r"|Unrecognized config option: jax_cpu_collectives_implementation"
                         r"|gloo[^\n]*(not (available|supported|implemented|built)|unavailable)", re.IGNORECASE)
PORT_TAKEN = "Failed to start RPC server"  # the coordinator's port was taken after _free_port released it


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_workers(out: pathlib.Path) -> list[subprocess.Popen]:
  """Starts the workers on a free localhost port; their output goes to OUT/process_{i}.log."""
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}  # the worker sets its own
  procs = []
  for i in range(NUM_PROCESSES):
    with open(out / f"process_{i}.log", "w", encoding="utf-8") as log:
      procs.append(subprocess.Popen([sys.executable, str(WORKER), f"--process_id={i}",
                                     f"--num_processes={NUM_PROCESSES}", f"--port={port}", f"--out={out}"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs


def _kill(procs: list[subprocess.Popen]) -> None:
  for p in procs:
    if p.poll() is None:
      p.kill()
    p.wait()


def _wait(procs: list[subprocess.Popen], out: pathlib.Path, limit) -> bool:
  """Waits for the workers: True when all succeeded, False when the port was taken (start again).
  Once one fails the other is killed (it would wait for it until a timeout); then the test fails
  with their output, or skips if gloo CPU collectives are unavailable."""
  deadline = time.monotonic() + limit.seconds
  while any(p.poll() is None for p in procs) and not any(p.poll() for p in procs):
    if time.monotonic() > deadline:
      _kill(procs)
      pytest.fail(limit.message(f"the {NUM_PROCESSES} multihost workers") + "\n" + _tails(out))
    time.sleep(0.1)
  _kill(procs)
  if all(p.returncode == 0 for p in procs):
    return True
  logs = _tails(out)
  if PORT_TAKEN in logs:
    return False
  if found := UNAVAILABLE.search(logs):
    pytest.skip(f"jax.distributed with gloo CPU collectives is unavailable here ({found[0]!r})")
  codes = [p.returncode for p in procs]
  pytest.fail(f"multihost workers exited with {codes}:\n{logs}")


def _tails(out: pathlib.Path) -> str:
  return "\n".join(f"--- process {i}:\n" + (out / f"process_{i}.log").read_text(errors="replace")[-3000:]
                   for i in range(NUM_PROCESSES))


def _reference() -> dict:
  """The same data in this process: both hosts' local batches, and one step per loss on one device."""
  records = worker.make_records()
  formatter = worker.make_formatter(records)
  locals_ = [worker.local_batch(records, formatter, i, NUM_PROCESSES) for i in range(NUM_PROCESSES)]
  global_batch = {k: np.concatenate([b[k] for b in locals_], axis=1) for k in locals_[0]}  # host 0's rows first
  mesh = models.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  batch = jax.device_put(global_batch, models.sharding.batch_sharding(mesh))
  steps = {loss: (jax.device_get(metrics), worker.flat_params(params))
           for loss, (metrics, params) in worker.train_steps(mesh, batch).items()}
  eval_dir = tempfile.mkdtemp(prefix="multihost_eval_ref")
  worker.sampled_eval(mesh, records, formatter, eval_dir)
  return {"indices": [worker.source_indices(b, records, formatter) for b in locals_],
          "global_batch": global_batch, "steps": steps, "eval_dir": eval_dir}


@pytest.fixture(scope="module")
def run(tmp_path_factory, timeouts):
  """(process reports, process 0's global.npz, the single-process reference).

  The reference is computed first, alone, and timed: each worker does the same work after starting
  a Python that imports JAX (one calibration), so the workers' limit is 8 (conftest.MARGIN) times
  NUM_PROCESSES * (reference + calibration) (as if they had one core between them), at least FLOOR_S.
  """
  out = tmp_path_factory.mktemp("multihost")
  start = time.monotonic()
  reference = _reference()
  reference_s = time.monotonic() - start
  limit = timeouts.limit(FLOOR_S, NUM_PROCESSES * (reference_s + timeouts.calibration_s),
                         f"{NUM_PROCESSES} x (the reference in this process {reference_s:.1f} s + calibration "
                         f"{timeouts.calibration_s:.2f} s)")
  print(limit.describe("the workers' limit"))  # shown with a failure's captured output
  for _ in range(3):  # again if another program took the port before the coordinator bound it
    if _wait(_start_workers(out), out, limit):
      break
  else:
    pytest.fail("the coordinator could not bind a free port 3 times:\n" + _tails(out))
  reports = [json.loads((out / f"process_{i}.json").read_text()) for i in range(NUM_PROCESSES)]
  with np.load(out / "global.npz") as npz:
    arrays = dict(npz)
  return reports, arrays, reference


def test_processes_see_a_global_mesh(run):
  reports, _, _ = run
  for i, r in enumerate(reports):
    assert (r["process_index"], r["process_count"]) == (i, NUM_PROCESSES)
    assert (r["device_count"], r["local_device_count"]) == (4, 2)
    assert [p for _, p in r["mesh_devices"]] == [0, 0, 1, 1]  # mesh order: process 0's devices first
    assert r["local_shape"] == [1, worker.GLOBAL_ROWS // NUM_PROCESSES, worker.SEQ_LEN]
    assert r["global_shape"] == [1, worker.GLOBAL_ROWS, worker.SEQ_LEN]


def test_hosts_read_disjoint_halves(run):
  reports, _, reference = run
  seen = [r["source_indices"] for r in reports]
  assert seen == reference["indices"]  # each host's pipeline is the one built here with its process_index
  assert all(len(s) > worker.GLOBAL_ROWS // NUM_PROCESSES for s in seen)  # packed: more examples than rows
  assert not set(seen[0]) & set(seen[1])
  for i, s in enumerate(seen):
    assert all(j % NUM_PROCESSES == i for j in s), (i, s)  # records[i::2] on host i


def test_global_batch_is_the_hosts_batches_in_process_order(run):
  _, arrays, reference = run
  for key, expected in reference["global_batch"].items():
    np.testing.assert_array_equal(arrays[f"batch/{key}"], expected, err_msg=key)


@pytest.mark.parametrize("loss", worker.LOSSES)
def test_train_step_matches_one_process(run, loss):
  reports, arrays, reference = run
  metrics, params = reference["steps"][loss]
  for r in reports:
    got = r[loss]
    assert got["nonfinite"] == 0.0
    np.testing.assert_allclose(got["loss"], float(metrics["loss"]), rtol=1e-5)
    np.testing.assert_allclose(got["grad_norm"], float(metrics["grad_norm"]), rtol=1e-5)
    np.testing.assert_allclose(got["param_total"], sum(float(np.sum(v, dtype=np.float64)) for v in params.values()),
                               rtol=1e-6)
  assert reports[0][loss] == reports[1][loss]  # the step's outputs are replicated: both hosts agree exactly
  # Adam's first step moves each parameter by lr * g / (|g| + eps) (~lr): for |g| near eps (1e-8)
  # the reduction-order rounding of g shows (up to ~0.3% of lr seen), so elements are compared
  # to 5% of the step; a wrong batch or reduction moves many by ~lr.
  lr = worker.run_config(loss).optimizer.learning_rate
  assert float(metrics["learning_rate"]) == pytest.approx(lr)  # no warmup: the step is not a no-op
  for key, expected in params.items():
    np.testing.assert_allclose(arrays[f"{loss}/{key}"], expected, rtol=0, atol=5e-2 * lr, err_msg=key)


def test_sampled_eval_across_hosts_equals_one_process(run):
  """Both hosts generate their rows of each batch; process 0 alone grades and writes the same samples."""
  reports, _, reference = run
  out = pathlib.Path(reports[0]["eval_dir"])
  assert reports[1]["eval"] == {}  # only process 0 returns (and writes) results
  key = lambda r: (r["benchmark"], r["problem"], r["sample"])  # noqa: E731
  rows = sorted((json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()), key=key)
  ref_dir = pathlib.Path(reference["eval_dir"])
  ref = sorted((json.loads(line) for line in (ref_dir / "samples.jsonl").read_text().splitlines()), key=key)
  assert len(rows) == 12 and [r["completion"] for r in rows] == [r["completion"] for r in ref]
  assert reports[0]["eval"]["benchmarks"] == json.loads((ref_dir / "results.json").read_text())["benchmarks"]
