"""The prepared-data store: builders prepared once into a data dir (again when their sources change), and the
random-access `RecordSource` of one prepared split that `load_source` returns."""

from __future__ import annotations

import collections.abc
import hashlib
import json
import os
import pathlib
import re
import shutil
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from rankjax.data.tfds_builders.builders import BUILDERS, LocalFilesBuilder, SftConfig, SftJsonl, known_builders
from rankjax.data.tfds_builders.records import expected_names, has_records
from rankjax.models.errors import ConfigError, DataError, DataFileNotFoundError


def _sft_config_name(manual_dir: str, mapping: dict) -> str:
  """Returns a config name unique to a manual dir and field mapping: "<dir basename>_<hash>"."""
  base = re.sub(r"[^A-Za-z0-9_]+", "_", os.path.basename(os.path.normpath(manual_dir))).strip("_") or "data"
  digest = hashlib.sha256(json.dumps([os.path.abspath(manual_dir), mapping], sort_keys=True).encode())
  return f"{base}_{digest.hexdigest()[:10]}"


def make_sft_builder(name: str | None, manual_dir: str, data_dir: str | None = None, *,
                     prompt_field: str = "prompt", response_field: str = "response",
                     messages_field: str = "", answer_field: str = "") -> SftJsonl:
  """Returns a prepared `sft_jsonl` builder with this field mapping (prepared into data_dir if needed).

  `name` is the config name (its prepared data lives in data_dir/sft_jsonl/<name>/); None derives one from
  the manual dir and the mapping, so different files or mappings never share a prepared dataset.
  """
  mapping = {"prompt_field": prompt_field, "response_field": response_field,
             "messages_field": messages_field, "answer_field": answer_field}
  for key, value in mapping.items():
    if not isinstance(value, str):
      raise TypeError(f"sft_jsonl: {key} must be a str field name, got {value!r}")
  if not messages_field and not (prompt_field and (response_field or answer_field)):
    raise ConfigError("sft_jsonl: set messages_field, or prompt_field and response_field (or, for an evaluation "
                     "set without responses, prompt_field and answer_field)")
  name = name or _sft_config_name(manual_dir, mapping)
  config = SftConfig(name=name, description=f"fields {mapping}", **mapping)
  builder = SftJsonl(config=config, data_dir=data_dir, file_format="array_record")
  return prepare(builder, manual_dir)


def make_builder(builder_name: str, manual_dir: str, data_dir: str | None = None,
                 **builder_kwargs) -> LocalFilesBuilder:
  """Returns the named builder, prepared from manual_dir into data_dir if needed.

  `builder_name` is one of `known_builders()`, "math_eval/<set>" or "math_eval" with config="<set>".
  sft_jsonl takes name, prompt_field, response_field, messages_field, answer_field (see make_sft_builder).
  """
  name, _, config = builder_name.partition("/")
  config = builder_kwargs.pop("config", None) or config or None
  if name not in BUILDERS:
    raise ValueError(f"unknown builder {builder_name!r}; known: {known_builders()}")
  if name == "sft_jsonl":
    if config:
      builder_kwargs.setdefault("name", config)
    return make_sft_builder(builder_kwargs.pop("name", None), manual_dir, data_dir, **builder_kwargs)
  if builder_kwargs:
    raise TypeError(f"{name}: unexpected arguments {sorted(builder_kwargs)}")
  cls = BUILDERS[name]
  if cls.BUILDER_CONFIGS:
    names = [c.name for c in cls.BUILDER_CONFIGS]
    if config not in names:
      raise ValueError(f"{name} needs a config, one of {names} (e.g. '{name}/{names[0]}'); got {config!r}")
  elif config:
    raise ValueError(f"{name} has no configs; got {config!r}")
  return prepare(cls(config=config, data_dir=data_dir, file_format="array_record"), manual_dir)


def prepare(builder: LocalFilesBuilder, manual_dir: str) -> LocalFilesBuilder:
  """Returns `builder` prepared from `manual_dir`: the existing data when its source fingerprint matches,
  else freshly generated (a stale prepared version is deleted first). Never downloads anything.

  When manual_dir is missing but the dataset is prepared (e.g. data_dir copied to another machine), the
  prepared data is used as is, with a warning.
  """
  manual = pathlib.Path(os.path.abspath(os.path.expanduser(manual_dir)))
  if builder.is_prepared():
    if not manual.is_dir():
      logging.warning("%s: manual dir %s is missing; using the prepared data at %s unchecked",
                      builder.name, manual, builder.data_dir)
      return builder
    stored = (builder.info.metadata or {}).get("source_fingerprint")
    if stored == builder.fingerprint(manual):
      return builder
    logging.warning("%s: the source files or field mapping changed since %s was prepared; preparing again",
                    builder.name, builder.data_dir)
    shutil.rmtree(builder.data_path)
    builder = type(builder)(config=builder.builder_config, data_dir=builder.data_dir_root,
                            file_format="array_record")
  for split, paths in builder.split_files(manual).items():  # FileNotFoundError naming the path before TFDS's checks
    if not any(has_records(p) for p in paths):  # TFDS would fail with "No examples were yielded"
      raise DataError(f"{builder.name}: split {split!r} has no records: {', '.join(map(str, paths))} "
                       f"{'is' if len(paths) == 1 else 'are'} empty (blank lines are not records); nothing was "
                       "prepared")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual), try_download_gcs=False),
      file_format="array_record")
  return builder


def _plain(value: Any) -> Any:
  """Returns a decoded feature value as plain Python: bytes -> str, numpy scalars -> int / float."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, np.generic):
    return value.item()
  return value


class RecordSource(collections.abc.Sequence):
  """Random-access records of one prepared split: `len(src)`, `src[i]` -> dict of str / int.

  Holds only the prepared dataset's directory and the split, and opens the array_record files lazily, so
  it pickles cheaply (e.g. into Grain worker processes) and works as `grain.MapDataset.source(src)`.
  """

  def __init__(self, prepared_dir: str, split: str):
    self.prepared_dir, self.split = os.fspath(prepared_dir), split
    self._source = None

  @property
  def source(self):
    """Returns the underlying `tfds` ArrayRecordDataSource (opened on first use)."""
    if self._source is None:
      self._source = tfds.builder_from_directory(self.prepared_dir).as_data_source(split=self.split)
    return self._source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index):
    """Returns record `index` as a dict of str / int (a list of them for a slice)."""
    if isinstance(index, slice):
      return self.__getitems__(range(*index.indices(len(self))))
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range for {len(self)} records")
    return {k: _plain(v) for k, v in self.source[index].items()}

  def __getitems__(self, indices) -> list[dict]:
    """Returns the records at `indices` (one batched read)."""
    return [{k: _plain(v) for k, v in r.items()} for r in self.source.__getitems__(list(indices))]

  def __getstate__(self) -> dict:
    return {"prepared_dir": self.prepared_dir, "split": self.split}

  def __setstate__(self, state: dict):
    self.__init__(state["prepared_dir"], state["split"])

  def __repr__(self) -> str:
    return f"RecordSource({self.prepared_dir!r}, split={self.split!r})"


def load_source(builder_name: str, split: str, manual_dir: str, data_dir: str | None = None,
                **builder_kwargs) -> RecordSource:
  """Returns the random-access records of `split` (TFDS split syntax, e.g. "train[:100]") of a builder,
  preparing it from manual_dir into data_dir (None: TFDS's default) first unless already prepared.

  Raises FileNotFoundError naming the path and expected file names when the manual dir or the split's
  file is missing, ValueError for an unknown builder / config.
  """
  base_split = re.match(r"^\s*(\w+)", split)
  if not base_split:
    raise ConfigError(f"{builder_name}: invalid split {split!r}")
  builder = make_builder(builder_name, manual_dir, data_dir, **builder_kwargs)
  if base_split.group(1) not in builder.info.splits:
    where = os.path.abspath(manual_dir)
    expected = expected_names(base_split.group(1)) if builder.name != "math_eval" else "test.jsonl"
    raise DataFileNotFoundError(f"{builder.info.full_name}: no split {base_split.group(1)!r} in {where} "
                            f"(expected {expected}); prepared splits: {sorted(builder.info.splits)}")
  return RecordSource(os.fspath(builder.data_dir), split.strip())
