"""Static-batch sampling on a mesh: fixed-size batches of (prompt, per-sample key) rows, data-parallel.

The evaluation harness sampled this way before the continuous-batching engine (`rankjax.sampling.engine`); it
remains the baseline the engine is tested and benchmarked against. Every row carries its own PRNG key, so a
sample's random draws depend only on its key: the same seed gives the same samples whatever the batch size, the
device count or which samples a resumed run still had to draw, up to float rounding of the logits (the batch's
width and row count; see "Reproducibility" in `rankjax.sampling`).
Rows are split over the mesh's batch axes ("data", "fsdp"); with several processes every host builds the
same global batch, computes its devices' rows, and all hosts receive every row's tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rankjax.models.sharding import BATCH_AXES
from rankjax.sampling.buckets import bucket_length
from rankjax.sampling.config import SamplingConfig
from rankjax.sampling.finish import FINISH_LENGTH, FINISH_STOP
from rankjax.sampling.static_batch import generate_tokens


@dataclasses.dataclass(frozen=True)
class Completion:
  """One generated sample: its token ids (stop token excluded) and why it ended (FINISH_STOP / FINISH_LENGTH)."""

  tokens: list[int]
  finish: str


class Sampler:
  """Generates batches of `rows` rows with `sampling` on `mesh` (None: the default device).

  `rows` is the global batch; it must be a multiple of the mesh's data*fsdp size, else every device
  computes the whole batch. Prompt widths are bucketed (`bucket_length`) to limit recompiles.
  """

  def __init__(self, model, params, sampling: SamplingConfig, rows: int, pad_id: int = 0, mesh: Mesh | None = None):
    self.model, self.params, self.sampling = model, params, sampling
    self.rows, self.pad_id, self.mesh = int(rows), int(pad_id), mesh
    if mesh is None:
      self._rows_sharding = None
    else:
      ways = int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.shape]))
      axes = BATCH_AXES if self.rows % ways == 0 else None
      self._rows_sharding = NamedSharding(mesh, P(axes))
      self._replicate = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, P()))  # one compile per shape

  def _put(self, array: np.ndarray):
    if self._rows_sharding is None:
      return jnp.asarray(array)
    sharding = NamedSharding(self.mesh, P(*self._rows_sharding.spec, *(None,) * (array.ndim - 1)))
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

  def _fetch(self, array) -> np.ndarray:
    if self._rows_sharding is None or jax.process_count() == 1:
      return np.asarray(jax.device_get(array))
    return np.asarray(self._replicate(array).addressable_data(0))

  def generate(self, prompts: list[list[int]], keys: np.ndarray) -> list[Completion]:
    """Returns the completion of each prompt (<= rows of them), row r sampled with raw key keys[r]."""
    n = len(prompts)
    if not 0 < n <= self.rows or keys.shape != (n, 2):
      raise ValueError(f"Sampler.generate: {n} prompts and keys {keys.shape} for batches of {self.rows} rows")
    width = bucket_length(max(len(p) for p in prompts))
    ids = np.full((self.rows, width), self.pad_id, np.int32)
    mask = np.zeros((self.rows, width), np.int32)
    row_keys = np.zeros((self.rows, 2), np.uint32)
    for r, prompt in enumerate(prompts):
      ids[r, width - len(prompt):] = prompt
      mask[r, width - len(prompt):] = 1
    row_keys[:n] = keys
    tokens, lengths = generate_tokens(self.model, self.params, self._put(ids), self._put(mask), self.sampling,
                                      self._put(row_keys))
    tokens, lengths = self._fetch(tokens), self._fetch(lengths)
    limit = self.sampling.max_new_tokens
    return [Completion(tokens[r, :lengths[r]].tolist(), FINISH_LENGTH if lengths[r] >= limit else FINISH_STOP)
            for r in range(n)]
