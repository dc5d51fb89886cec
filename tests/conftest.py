"""Test setup: 8 fake CPU devices (set before JAX initialises), offline HF, shared data location."""

import os
import pathlib

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
  """Path to ../shared/data; skips locally when absent, fails in CI (CI=true)."""
  if not SHARED_DATA.exists():
    if os.environ.get("CI") == "true":
      pytest.fail(f"CI needs the shared data at {SHARED_DATA}")
    pytest.skip(f"shared data not found at {SHARED_DATA}")
  return SHARED_DATA
