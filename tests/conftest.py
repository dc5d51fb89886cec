"""Test setup: 8 fake CPU devices (set before JAX initialises), offline HF, shared data location,
the `--multiprocess` selection and the calibrated time limits of tests that start processes."""

import dataclasses
import os
import pathlib
import subprocess
import sys
import time
import warnings

# LLVM optimisation level 0: the same HLO, so the same numerics, and XLA:CPU compiles the suite's many small
# programs faster (tests/test_model.py: 44 s at the default level, 38 s at 1, 32 s at 0), though steps then run
# slower (a 6-step tiny loop.train: 12.1 s / 10.2 s / 13.4 s). Whole fresh-clone `make test`, parallel +
# multiprocess parts: 6:19 + 1:11 at level 0, 6:47 + 1:22 at level 1.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"  # also for the processes tests start
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count=8 {FAST_COMPILE_FLAGS}").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A persistent compilation cache shared by the xdist workers and the processes the tests start: many tests
# compile the same tiny models and steps again (every loop.train call jits anew), and a hit skips XLA. Only
# compilations over 0.5 s are stored: writing every tiny eager op made the suite slower, not faster.
# Entries are keyed by the HLO, the flags and the JAX version; eviction (LRU) also makes reads and writes
# take a file lock, so concurrent processes never see a half-written entry.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 * 1024 ** 3))

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
TIMEOUT_SCALE_ENV = "RANKJAX_TEST_TIMEOUT_SCALE"
MARGIN = 8  # a limit is MARGIN times the expected time (or its floor, whichever is longer)
CALIBRATION = "import jax, jax.numpy as jnp, flax.linen, optax; jax.jit(lambda x: x * 2 + 1)(jnp.ones(8)).block_until_ready()"


# Marked `slow` here, from timing data (serial seconds on a loaded 2-core machine, 2026-11): the
# checkpoint/resume runs and the duplicate parametrizations (one of each property stays in the quick
# `-m "not slow"` run). Tests in files that carry their own markers (test_main_cli, test_multihost,
# test_wheel) are not listed. An entry without [...] covers all of a test's parametrizations.
SLOW = {
    "tests/test_train.py::test_run_writes_files_and_resume_equals_uninterrupted": 41,
    "tests/test_train.py::test_relaunch_with_more_steps_continues": 30,
    "tests/test_train.py::test_corrupt_checkpoint_is_a_clear_error": 18,
    "tests/test_train.py::test_data_parallel_sharding_equals_single_device[talr]": 12,
    "tests/test_train.py::test_fused_and_dense_train_steps_agree[talr]": 10,
    "tests/test_train_file_source.py::test_relaunch_resumes_data_and_metrics_exactly": 24,
    "tests/test_train_sharded_hf.py::test_fsdp_tensor_mesh_equals_single_device": 25,
    "tests/test_train_sharded_hf.py::test_run_from_hf_checkpoint_on_mesh_and_export": 20,  # estimated (it failed early when measured)
    "tests/test_train_sharded_hf.py::test_paper_config_runs_on_a_tiny_checkpoint": 10,
    "tests/test_sft_pipeline.py::test_packed_examples_do_not_attend_to_each_other": 12,
    "tests/test_model.py::test_remat_same_gradient[layer]": 10,
    "tests/test_loop_hygiene.py::test_first_nonfinite_step_is_named_at_the_next_log_step": 14,
    "tests/test_loop_hygiene.py::test_only_process_zero_writes_run_files": 14,
    "tests/test_losses_vocab_parallel.py::test_vocab_parallel_equals_single_device"
    "[ranktuner-histogram-mesh_shape1]": 3,
    **{f"tests/test_losses_fused.py::test_fused_equals_dense[1000-sort-{name}]": 2 for name in ("ranktuner", "talr")},
    # Measured in a full `make test` (-n 2); the ranktuner / qwen2_tied / logits cases stay in the quick run.
    "tests/test_train.py::test_accumulation_equals_one_big_batch[talr]": 10,
    "tests/test_hf_interop.py::test_kv_cache_decoding_equals_full_forward[qwen3]": 9,
    "tests/test_losses_head_loss.py::test_whole_batch_context_spans_all_micro_steps[talr-hidden_kernel]": 7,
    # Issue 12, measured on a loaded 2-core machine (2026-12).
    "tests/test_determinism.py::test_same_config_and_seed_give_bit_identical_runs": 31,
    "tests/test_determinism.py::test_a_stop_request_saves_that_step_and_raises_preempted": 14,
    "tests/test_checkpoint_faults.py::test_unwritable_checkpoint_folder_fails_before_the_first_step": 13,
    "tests/test_security.py::test_checkpoints_load_without_pickle": 12,
}


# Multiprocess tests whose processes signal or wait on each other at chosen moments (SIGTERM mid-step, heartbeats,
# collectives over gloo): they run on one xdist worker, one at a time, so two of them never share the cores.
TIMING_SENSITIVE = {"tests/test_multihost.py", "tests/test_multihost_failure.py", "tests/test_preemption.py"}


def _slow_entry(nodeid: str):
  """The SLOW entry that covers `nodeid`, or None."""
  if nodeid in SLOW:
    return nodeid
  base = nodeid.split("[", 1)[0]
  return base if base in SLOW else None


def pytest_addoption(parser):
  parser.addoption(
      "--multiprocess", choices=("include", "exclude", "only"), default="include",
      help="tests marked `multiprocess` (they start JAX processes): run them too (include, the default), "
      "leave them out (exclude: the parallel `-n 2` part of `make test`) or run only them (only: its serial part).")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group markers
def pytest_collection_modifyitems(config, items):
  mode = config.getoption("multiprocess")
  used = set()
  for item in items:
    if entry := _slow_entry(item.nodeid):
      used.add(entry)
      item.add_marker(pytest.mark.slow)
  files = {item.nodeid.split("::", 1)[0] for item in items}
  if not any("::" in arg for arg in config.args):  # whole files collected: an entry that matches nothing is stale
    stale = sorted(e for e in SLOW if e not in used and e.split("::", 1)[0] in files)
    if stale:
      warnings.warn(pytest.PytestWarning(f"tests/conftest.py SLOW names tests that do not exist: {stale}"))
  keep, drop = [], []
  for item in items:
    multiprocess = item.get_closest_marker("multiprocess") is not None
    if multiprocess and item.nodeid.split("::", 1)[0] in TIMING_SENSITIVE:
      # with -n --dist loadgroup: one worker runs these one after another; the other multiprocess tests share
      # the second worker (`make test` runs its multiprocess part on 2 workers)
      item.add_marker(pytest.mark.xdist_group("timing_sensitive"))
    (keep if mode == "include" or multiprocess == (mode == "only") else drop).append(item)
  if drop:
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


@pytest.fixture(scope="session")
def shared_data():
  """Path to ../shared/data; skips locally when absent, fails in CI (CI=true)."""
  if not SHARED_DATA.exists():
    if os.environ.get("CI") == "true":
      pytest.fail(f"CI needs the shared data at {SHARED_DATA}")
    pytest.skip(f"shared data not found at {SHARED_DATA}")
  return SHARED_DATA


@dataclasses.dataclass(frozen=True)
class Limit:
  """A time limit: max(floor_s, margin * expected_s) * scale seconds, and how it was derived."""
  seconds: float
  floor_s: float
  margin: float
  expected_s: float
  expected_from: str
  calibration_s: float
  scale: float

  def describe(self, what: str = "the limit") -> str:
    return (f"{what} {self.seconds:.0f} s = max(floor {self.floor_s:.0f} s, {self.margin:g} x expected "
            f"{self.expected_s:.1f} s) x {TIMEOUT_SCALE_ENV}={self.scale:g}; expected = {self.expected_from}, where the "
            f"calibration (a fresh Python importing jax, flax and optax and running a tiny jit) took "
            f"{self.calibration_s:.2f} s")

  def message(self, what: str) -> str:
    return (f"{what} ran past {self.describe()}. This machine is too slow or too loaded for the test: run it alone "
            f"(`pytest --multiprocess=only tests`), or allow more time with {TIMEOUT_SCALE_ENV}=2 (or more).")


@dataclasses.dataclass(frozen=True)
class Timeouts:
  """Time limits for tests that start processes, derived from this machine's measured speed."""
  calibration_s: float
  scale: float

  def limit(self, floor_s: float, expected_s: float = 0.0, expected_from: str = "") -> Limit:
    """A Limit for work expected to take `expected_s` (measured or a multiple of calibration_s)."""
    seconds = max(floor_s, MARGIN * expected_s) * self.scale
    return Limit(seconds, floor_s, MARGIN, expected_s, expected_from or f"{expected_s:.1f} s", self.calibration_s,
                 self.scale)

  def calibrated(self, floor_s: float, calibrations: float) -> Limit:
    """A Limit for work expected to take `calibrations` times the calibration."""
    return self.limit(floor_s, calibrations * self.calibration_s,
                      f"{calibrations:g} x calibration {self.calibration_s:.2f} s")


@pytest.fixture(scope="session")
def timeouts() -> Timeouts:
  """Measures the calibration once per session (~1 s on an idle 2-core machine); RANKJAX_TEST_TIMEOUT_SCALE
  (default 1) multiplies every limit."""
  try:
    scale = float(os.environ.get(TIMEOUT_SCALE_ENV, "1"))
  except ValueError:
    pytest.fail(f"{TIMEOUT_SCALE_ENV}={os.environ[TIMEOUT_SCALE_ENV]!r} is not a number")
  if not scale > 0:
    pytest.fail(f"{TIMEOUT_SCALE_ENV}={scale} must be positive")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  start = time.monotonic()
  try:
    out = subprocess.run([sys.executable, "-c", CALIBRATION], env=env, capture_output=True, text=True,
                         timeout=600 * scale)
  except subprocess.TimeoutExpired:
    pytest.fail(f"the calibration (importing jax, flax and optax and running a tiny jit in a fresh Python) ran past "
                f"{600 * scale:g} s: this machine is far too slow or loaded for the tests that start processes "
                f"({TIMEOUT_SCALE_ENV}={scale:g})")
  if out.returncode:
    pytest.fail(f"the calibration {CALIBRATION!r} exited with {out.returncode}:\n{out.stderr[-3000:]}")
  return Timeouts(time.monotonic() - start, scale)
