"""Names and paths of a run folder's files (see the package docstring for the layout)."""

from __future__ import annotations

import os
import re

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
EVAL_DIR = "eval"
EVAL_ROW_FILE = "row.json"
TENSORBOARD_DIR = "tensorboard"
HF_EXPORT_DIR = "hf"
PEFT_ADAPTER_DIR = "peft_adapter"
_EVAL_STEP_DIR = re.compile(r"^step_(\d+)$")


def config_path(workdir: str) -> str:
  """WORKDIR/config.json."""
  return os.path.join(workdir, CONFIG_FILE)


def hf_export_dir(workdir: str) -> str:
  """WORKDIR/hf: the trained model as a Hugging Face checkpoint (config.export_hf)."""
  return os.path.join(workdir, HF_EXPORT_DIR)


def peft_adapter_dir(workdir: str) -> str:
  """WORKDIR/peft_adapter: a LoRA run's adapters as a PEFT adapter (config.export_hf)."""
  return os.path.join(workdir, PEFT_ADAPTER_DIR)


def metrics_path(workdir: str) -> str:
  """WORKDIR/metrics.jsonl."""
  return os.path.join(workdir, METRICS_FILE)


def is_checkpoints_dir(path: str) -> bool:
  """True when `path` names a run's checkpoints/ folder (not the run's workdir)."""
  return os.path.basename(os.path.normpath(path)) == CHECKPOINTS_DIR


def checkpoints_dir(path: str) -> str:
  """A run's checkpoints/ folder, given the run's workdir or that folder itself."""
  return path if is_checkpoints_dir(path) else os.path.join(path, CHECKPOINTS_DIR)


def workdir_of(path: str) -> str:
  """The run's workdir, given the workdir or its checkpoints/ folder (normalised, no trailing separator)."""
  path = os.path.normpath(path)
  return os.path.dirname(path) if is_checkpoints_dir(path) else path


def has_checkpoints_dir(workdir: str) -> bool:
  """True when WORKDIR/checkpoints/ exists (the run has started training; it may hold no committed step yet)."""
  return os.path.isdir(checkpoints_dir(workdir))


def eval_dir(workdir: str) -> str:
  """WORKDIR/eval."""
  return os.path.join(workdir, EVAL_DIR)


def eval_step_dir(workdir: str, step: int) -> str:
  """WORKDIR/eval/step_<step>: the periodic evaluation after `step` optimizer steps."""
  return os.path.join(eval_dir(workdir), f"step_{int(step)}")


def eval_step_of(name: str) -> int | None:
  """The step of an eval/ entry named `step_<N>`, None for any other name."""
  m = _EVAL_STEP_DIR.match(name)
  return int(m.group(1)) if m else None


def eval_row_path(workdir: str) -> str:
  """WORKDIR/eval/row.json."""
  return os.path.join(eval_dir(workdir), EVAL_ROW_FILE)


def tensorboard_dir(workdir: str) -> str:
  """WORKDIR/tensorboard."""
  return os.path.join(workdir, TENSORBOARD_DIR)
