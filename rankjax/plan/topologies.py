"""TPU slices by their usual names (v5p-8, v5e-16, ...): libtpu topology, chips, and per-chip HBM, peak and bandwidth.

Sources. Chips, HBM per chip, peak bf16 FLOP/s and HBM bandwidth: Google Cloud's TPU system-architecture pages
(cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e): v4 32 GiB, 275 TFLOP/s, 1,200 GB/s; v5e 16 GiB, 197 TFLOP/s,
819 GB/s; v5p 95 GiB, 459 TFLOP/s, 2,765 GB/s; v6e (Trillium) 32 GiB, 918 TFLOP/s, 1,640 GB/s. The peaks live in
`rankjax.models.flops` (by device kind), shared with the training loop's MFU.
The libtpu topology names, chip configurations (v4 and v5p chips are one "megacore" JAX device each), hosts' chip
bounds and wrap-around links: libtpu's own naming, as MaxText's `accelerator_to_spec_map.py` lists it. The number in
a v4/v5p name counts TensorCores (two per chip); in a v5e/v6e name, chips.

Only single slices; multi-slice (DCN) plans may come later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Generation:
  """One TPU generation's chip: what every slice of it shares."""

  prefix: str  # the name's prefix: "v5p"
  libtpu_prefix: str  # libtpu's: "v5"
  chip_config: str  # "megacore" (one JAX device per chip of two TensorCores) or "default"
  cores_per_chip_in_name: int  # 2 where the slice name counts TensorCores (v4-8 = 4 chips)
  hbm_bytes: int  # per chip
  hbm_bytes_per_s: float  # per chip
  device_kind: str  # jax Device.device_kind


GENERATIONS = {
    "v4": Generation("v4", "v4", "megacore", 2, 32 * GIB, 1200e9, "TPU v4"),
    "v5e": Generation("v5e", "v5e", "default", 1, 16 * GIB, 819e9, "TPU v5 lite"),
    "v5p": Generation("v5p", "v5", "megacore", 2, 95 * GIB, 2765e9, "TPU v5"),
    "v6e": Generation("v6e", "v6e", "default", 1, 32 * GIB, 1640e9, "TPU v6 lite"),
}

# name -> (libtpu grid, wrap-around per dimension)
_SLICES = {
    "v4-8": ("2x2x1", (False, False, False)), "v4-16": ("2x2x2", (False, False, False)),
    "v4-32": ("2x2x4", (False, False, False)), "v4-64": ("2x4x4", (False, False, False)),
    "v4-128": ("4x4x4", (True, True, True)),
    "v5p-8": ("2x2x1", (False, False, False)), "v5p-16": ("2x2x2", (False, False, False)),
    "v5p-32": ("2x2x4", (False, False, False)), "v5p-64": ("2x4x4", (False, False, False)),
    "v5p-128": ("4x4x4", (True, True, True)),
    "v5e-4": ("2x2", (False, False, False)), "v5e-8": ("2x4", (False, False, False)),
    "v5e-16": ("4x4", (False, False, False)), "v5e-32": ("4x8", (False, False, False)),
    "v5e-64": ("8x8", (False, False, False)), "v5e-128": ("8x16", (False, True, False)),
    "v5e-256": ("16x16", (True, True, False)),
    "v6e-4": ("2x2", (False, False, False)), "v6e-8": ("2x4", (False, False, False)),
    "v6e-16": ("4x4", (False, False, False)), "v6e-32": ("4x8", (False, False, False)),
    "v6e-64": ("8x8", (False, False, False)), "v6e-128": ("8x16", (False, True, False)),
    "v6e-256": ("16x16", (True, True, False)),
}
CHIPS_PER_HOST_BOUNDS = (2, 2, 1)  # a TPU VM host's chips, as libtpu lays hosts out for these slices


@dataclasses.dataclass(frozen=True)
class Topology:
  """A single TPU slice."""

  name: str  # "v5p-8"
  generation: Generation
  grid: str  # "2x2x1"
  wrap: tuple[bool, bool, bool]

  @property
  def libtpu_name(self) -> str:
    """libtpu's topology name, e.g. "v5:2x2x1"."""
    return f"{self.generation.libtpu_prefix}:{self.grid}"

  @property
  def chips(self) -> int:
    n = 1
    for d in self.grid.split("x"):
      n *= int(d)
    return n

  @property
  def hbm_bytes(self) -> int:
    return self.generation.hbm_bytes


def names() -> list[str]:
  """Every slice name this table knows, in table order."""
  return list(_SLICES)


def get(name: str) -> Topology:
  """The slice called `name` (e.g. "v5p-8"); ValueError listing the known names otherwise."""
  if name not in _SLICES:
    raise ValueError(f"unknown TPU topology {name!r}; known: {', '.join(names())} (single slices)")
  prefix = name.split("-")[0]
  grid, wrap = _SLICES[name]
  topology = Topology(name, GENERATIONS[prefix], grid, wrap)
  expected = int(name.split("-")[1]) // topology.generation.cores_per_chip_in_name
  assert topology.chips == expected, (name, topology.chips, expected)
  return topology


def quiet_libtpu_env(topology: Topology) -> dict[str, str]:
  """Environment variables that keep libtpu from probing for TPU hosts on a machine that has none (its metadata
  server, worker host names), and let several processes load it at once (it otherwise takes a machine-wide lock
  file, /tmp/libtpu_lockfile, meant for sharing real chips; compiling needs none): set them before JAX loads
  libtpu."""
  return {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": topology.name, "TPU_WORKER_HOSTNAMES": "localhost",
          "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def set_quiet_libtpu_env(topology: Topology) -> None:
  """`quiet_libtpu_env` into os.environ (values already set are kept)."""
  for key, value in quiet_libtpu_env(topology).items():
    os.environ.setdefault(key, value)


LIBTPU_MISSING = ("compiling for a TPU topology needs libtpu, which this environment lacks: "
                  "pip install -e '.[tpu]' (jax[tpu] pinned to the installed JAX; about 700 MB)")


def devices(topology: Topology) -> list:
  """The compile-only JAX devices of `topology` (no TPU needed, but libtpu installed; RuntimeError naming the
  install command otherwise). Sets `quiet_libtpu_env` first (where unset)."""
  set_quiet_libtpu_env(topology)
  try:
    import libtpu  # noqa: F401, PLC0415
  except ImportError as e:
    raise RuntimeError(LIBTPU_MISSING) from e
  from jax.experimental import topologies as jax_topologies  # noqa: PLC0415
  desc = jax_topologies.get_topology_desc(
      platform="tpu", topology_name=topology.libtpu_name, chip_config_name=topology.generation.chip_config,
      chips_per_host_bounds=CHIPS_PER_HOST_BOUNDS, num_slices=1, wrap=topology.wrap)
  return list(desc.devices)


@contextlib.contextmanager
def without_persistent_cache():
  """Compiles inside skip JAX's persistent compilation cache: a compile-only TPU executable cannot be read back
  without a TPU client, so storing it costs time and reading it warns."""
  import jax  # noqa: PLC0415
  previous = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", previous)
