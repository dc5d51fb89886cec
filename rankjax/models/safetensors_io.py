"""Tensor-by-tensor access to a Hugging Face safetensors checkpoint, and a sharded writer.

Reading memory-maps each file: `CheckpointReader.array(name)` is a read-only NumPy view of
the bytes on disk, so a tensor is only read when (and where) it is sliced: loading a
sharded parameter reads just each device's slice, and the checkpoint never sits in host
memory whole. (The `safetensors` library's NumPy loader cannot represent bfloat16, which
`ml_dtypes` can; the file layout is safetensors' documented one: an 8-byte little-endian
header size, a JSON header of name -> dtype, shape, byte offsets, then the data.)
Writing uses `safetensors.numpy.save_file`, one shard at a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np
import safetensors.numpy

from rankjax.models.errors import DataFileNotFoundError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  file: str
  dtype: np.dtype
  shape: tuple[int, ...]
  start: int  # absolute byte offset in `file`
  end: int


def _read_header(file: str) -> dict[str, TensorInfo]:
  size = os.path.getsize(file)
  with open(file, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise ValueError(f"{file}: not a safetensors file (shorter than its 8-byte header size)")
    (header_len,) = struct.unpack("<Q", raw)
    if header_len > size - 8:
      raise ValueError(f"{file}: corrupt safetensors header (header size {header_len} > file size {size})")
    try:
      header = json.loads(f.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{file}: corrupt safetensors header ({e})") from e
  base = 8 + header_len
  out = {}
  for name, meta in header.items():
    if name == "__metadata__":
      continue
    if meta["dtype"] not in DTYPES:
      raise ValueError(f"{file}: tensor {name!r} has dtype {meta['dtype']}, not one of {sorted(DTYPES)}")
    dtype = np.dtype(DTYPES[meta["dtype"]])
    start, end = (base + int(o) for o in meta["data_offsets"])
    shape = tuple(int(s) for s in meta["shape"])
    if end > size or end - start != int(np.prod(shape)) * dtype.itemsize:
      raise ValueError(f"{file}: tensor {name!r} {shape} {meta['dtype']} does not fit its byte range "
                       f"[{start}, {end}) (file size {size}): the file is truncated or corrupt")
    out[name] = TensorInfo(file, dtype, shape, start, end)
  return out


def checkpoint_files(path: str) -> list[str]:
  """The safetensors files of checkpoint directory `path`: those named by its index, else model.safetensors, else all *.safetensors."""
  if not os.path.isdir(path):
    raise DataFileNotFoundError(f"checkpoint directory {path} does not exist")
  index = os.path.join(path, INDEX_FILE)
  if os.path.isfile(index):
    with open(index, encoding="utf-8-sig") as f:
      weight_map = json.load(f)["weight_map"]
    files = sorted(set(weight_map.values()))
    for name in files:
      if not os.path.isfile(os.path.join(path, name)):
        raise FileNotFoundError(f"{index} names {name}, which is missing from {path}")
    return [os.path.join(path, name) for name in files]
  if os.path.isfile(os.path.join(path, SINGLE_FILE)):
    return [os.path.join(path, SINGLE_FILE)]
  files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"no *.safetensors files in {path} (rankjax reads safetensors, not .bin/.pt checkpoints)")
  return [os.path.join(path, f) for f in files]


class CheckpointReader:
  """Name -> memory-mapped NumPy view over every tensor of a (possibly sharded) safetensors checkpoint."""

  def __init__(self, path: str):
    self.path = path
    self.tensors: dict[str, TensorInfo] = {}
    for file in checkpoint_files(path):
      for name, info in _read_header(file).items():
        if name in self.tensors:
          raise ValueError(f"tensor {name!r} appears in both {self.tensors[name].file} and {file}")
        self.tensors[name] = info
    self._maps: dict[str, np.memmap] = {}

  def __contains__(self, name: str) -> bool:
    return name in self.tensors

  def names(self) -> list[str]:
    return sorted(self.tensors)

  def array(self, name: str) -> np.ndarray:
    """A read-only view of tensor `name` in its stored dtype (no bytes are read until it is used)."""
    if name not in self.tensors:
      raise KeyError(f"{self.path}: the checkpoint has no tensor {name!r}")
    info = self.tensors[name]
    if info.file not in self._maps:
      self._maps[info.file] = np.memmap(info.file, dtype=np.uint8, mode="r")
    raw = self._maps[info.file][info.start:info.end]
    return raw.view(info.dtype).reshape(info.shape)


@dataclasses.dataclass(frozen=True)
class PendingTensor:
  """A tensor to write: its name, shape and dtype, and a function producing it (called once, when its shard is written)."""
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  produce: Callable[[], np.ndarray]

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


def write_checkpoint(tensors: Iterable[PendingTensor], path: str, max_shard_bytes: int) -> list[str]:
  """Writes HF-layout safetensors into directory `path`: one model.safetensors, or shards
  model-0000i-of-0000n.safetensors plus model.safetensors.index.json when the total exceeds
  `max_shard_bytes`. Only one shard's tensors are in host memory at a time. Returns the file names."""
  tensors = list(tensors)
  shards, current, size = [], [], 0
  for t in tensors:
    if current and size + t.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(t)
    size += t.nbytes
  shards.append(current)
  os.makedirs(path, exist_ok=True)
  names = ([SINGLE_FILE] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  for stale in os.listdir(path):  # a previous export with another shard count must not linger
    if stale.endswith(".safetensors") and stale not in names or (stale == INDEX_FILE and len(shards) == 1):
      os.remove(os.path.join(path, stale))
  for name, shard in zip(names, shards):
    arrays = {}
    for t in shard:
      a = np.ascontiguousarray(t.produce())
      if a.shape != tuple(t.shape) or a.dtype != np.dtype(t.dtype):
        raise ValueError(f"tensor {t.name!r}: produced {a.shape} {a.dtype}, declared {t.shape} {t.dtype}")
      arrays[t.name] = a
    tmp = os.path.join(path, name + ".tmp")
    safetensors.numpy.save_file(arrays, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(path, name))
  if len(shards) > 1:
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)},
             "weight_map": {t.name: name for name, shard in zip(names, shards) for t in shard}}
    with open(os.path.join(path, INDEX_FILE), "w", encoding="utf-8") as f:
      json.dump(index, f, indent=2, sort_keys=True)
  return names
