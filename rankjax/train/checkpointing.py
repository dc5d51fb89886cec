"""Orbax checkpoints in WORKDIR/checkpoints: params, optimizer state and step, saved as separate items
so that fine-tuning can restore the parameters of another run alone.

A step is written into a temporary directory (`<step>.orbax-checkpoint-tmp-*`) and renamed to `<step>` once
every item and every process has finished: a kill or a failed write (disk full, no permission) leaves at most
a temporary directory, which is never restored and is removed when the next run opens the manager.
"""

from __future__ import annotations

import os
import sys

import grain
import jax
import orbax.checkpoint as ocp

from rankjax import models
from rankjax.models.errors import DataFileNotFoundError
from rankjax.rundir import layout
from rankjax.rundir.progress import committed_steps  # noqa: F401 (re-exported: its users import it from here)


DATA_ITEM = "data_iter"
ANCHOR_ITEM = "anchor_params"  # psft's old-policy snapshot (`RunState.anchor_params`), in its runs' checkpoints only


def make_manager(workdir: str, keep: int = 3, async_writes: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager over WORKDIR/checkpoints that keeps the last `keep` steps; checkpoints hold
  params, optimizer state, meta, the Grain data iterator's state (one JSON per process) and, for psft, the
  old-policy snapshot.

  With `async_writes`, `save` returns once the arrays are copied to host memory and the data iterator's state
  is written; the files are written in a background thread while training goes on. Temporary directories
  left by an interrupted write are removed here.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                         enable_async_checkpointing=async_writes)
  names = ("params", "opt_state", "meta", DATA_ITEM, ANCHOR_ITEM)
  handlers = {DATA_ITEM: grain.checkpoint.CheckpointHandler()}
  return ocp.CheckpointManager(os.path.abspath(layout.checkpoints_dir(workdir)), options=options,
                               item_names=names, item_handlers=handlers)


def check_writable(manager: ocp.CheckpointManager) -> None:
  """Raises PermissionError naming the folder if this process cannot create files in the checkpoints folder, so
  that a run finds out before its first step rather than at its first save."""
  import tempfile  # noqa: PLC0415
  try:
    with tempfile.NamedTemporaryFile(dir=directory(manager), prefix=".write-probe-"):
      pass
  except OSError as e:
    raise PermissionError(f"cannot write checkpoints to {directory(manager)} ({type(e).__name__}: {e}); fix its "
                          "permissions or choose another --workdir. Nothing was trained.") from e


def directory(manager: ocp.CheckpointManager) -> str:
  """The checkpoints/ folder `manager` writes to."""
  return str(manager.directory)


def _write_error(manager, what: str, error: Exception) -> RuntimeError:
  latest = manager.latest_step()
  kept = (f"the last complete checkpoint, step {latest}, is intact" if latest is not None
          else "no complete checkpoint exists yet")
  return RuntimeError(f"{what} in {directory(manager)} failed ({type(error).__name__}: {error}); {kept}. "
                      "Check free disk space and write permission there, then relaunch to resume.")


def save(manager: ocp.CheckpointManager, state, extra_meta: dict | None = None, data_iterator=None) -> None:
  """Starts saving `state` (a TrainState) and the data iterator's position at its step, waiting first for the
  previous save. Blocks until written when the manager is synchronous; otherwise call `wait` before reading
  the files. Raises RuntimeError naming the step and the last complete checkpoint if a write fails."""
  step = int(jax.device_get(state.step))
  if manager.latest_step() == step:  # already saved (e.g. a preemption at a checkpoint step)
    return
  meta = {"step": step, **(extra_meta or {})}
  items = dict(params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
               meta=ocp.args.JsonSave(meta))
  if getattr(state, "anchor_params", None) is not None:  # psft's old-policy snapshot: needed for an exact resume
    items[ANCHOR_ITEM] = ocp.args.StandardSave(state.anchor_params)
  if data_iterator is not None:
    items[DATA_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
  try:
    manager.save(step, args=ocp.args.Composite(**items))
  except Exception as e:  # this write, or the previous (asynchronous) one, failed
    raise _write_error(manager, f"saving the checkpoint of step {step}", e) from e


def wait(manager: ocp.CheckpointManager) -> None:
  """Blocks until every started checkpoint write has been committed; RuntimeError if one failed."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    raise _write_error(manager, "writing a checkpoint", e) from e


def close(manager: ocp.CheckpointManager, raise_errors: bool = True) -> None:
  """Waits for pending writes and closes `manager`. With raise_errors=False (another exception is already on
  its way out) a failed write is reported on stderr instead of replacing that exception."""
  try:
    wait(manager)
  except RuntimeError as e:
    if raise_errors:
      raise
    print(f"[rankjax] {e}", file=sys.stderr, flush=True)
  finally:
    manager.close()


def _restore(manager, step, **items):
  try:
    return manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # orbax raises a variety of types for damaged files
    path = os.path.join(str(manager.directory), str(step))
    raise RuntimeError(f"checkpoint at {path} could not be restored ({type(e).__name__}: {e}). "
                       f"It may be corrupt or from an incompatible config; move it aside to resume from an "
                       f"earlier step, or use a new workdir.") from e


def restore_latest(manager: ocp.CheckpointManager, state, data_iterator=None):
  """Returns (state restored from the latest step, that step's meta), or (state, None) if there is none.

  With `data_iterator`, its position is restored too (in place); a checkpoint without one is an error.
  """
  step = manager.latest_step()
  if step is None:
    return state, None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": state.params, "opt_state": state.opt_state})
  items = dict(params=ocp.args.StandardRestore(abstract["params"]),
               opt_state=ocp.args.StandardRestore(abstract["opt_state"]), meta=ocp.args.JsonRestore())
  if data_iterator is not None:
    step_dir = os.path.join(str(manager.directory), str(step))
    if not os.path.isdir(os.path.join(step_dir, DATA_ITEM)):
      raise RuntimeError(f"checkpoint at {step_dir} has no data iterator state, so the data position cannot be "
                         "resumed exactly (was it written by a run on another data source?)")
    items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
  snapshot = getattr(state, "anchor_params", None)
  if snapshot is not None:
    step_dir = os.path.join(str(manager.directory), str(step))
    if not os.path.isdir(os.path.join(step_dir, ANCHOR_ITEM)):
      raise RuntimeError(f"checkpoint at {step_dir} holds no old-policy snapshot ({ANCHOR_ITEM}/), which this run's "
                         "loss (psft) needs to resume exactly: it was written by a run with another loss.name; resume "
                         "it with that loss, or use a new workdir")
    items[ANCHOR_ITEM] = ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, snapshot))
  out = _restore(manager, step, **items)
  state = state.replace(step=jax.numpy.asarray(out["meta"]["step"], jax.numpy.int32), params=out["params"],
                        opt_state=out["opt_state"])
  if snapshot is not None:
    state = state.replace(anchor_params=out[ANCHOR_ITEM])
  return state, dict(out["meta"])


def latest_step(checkpoint_dir: str) -> int | None:
  """The step of the latest finished checkpoint of a run (its workdir or checkpoints/), None when none."""
  directory = layout.checkpoints_dir(checkpoint_dir)
  if not os.path.isdir(directory):
    return None
  with ocp.CheckpointManager(os.path.abspath(directory), item_names=("params", "opt_state", "meta")) as manager:
    return manager.latest_step()


def params_target(model, mesh) -> dict:
  """What `restore_params` can restore into for `model` on `mesh`: a tree of jax.ShapeDtypeStruct, each with the
  sharding `create_state` gives that parameter; one abstract trace of the model, no random init compiled or run."""
  logical, abstract = models.abstract_params(model)
  shardings = models.param_shardings(logical, abstract, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def restore_params(checkpoint_dir: str, like_params):
  """Parameters of the latest checkpoint in `checkpoint_dir` (a run's workdir or its checkpoints/)."""
  directory = layout.checkpoints_dir(checkpoint_dir)
  if not os.path.isdir(directory):
    raise DataFileNotFoundError(f"init_from: {checkpoint_dir} is neither a Hugging Face checkpoint (config.json + "
                            f"*.safetensors) nor a rankjax workdir (no checkpoint directory at {directory})")
  with ocp.CheckpointManager(os.path.abspath(directory), item_names=("params", "opt_state", "meta")) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"init_from: {directory} holds no finished checkpoint")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_params)
    return _restore(manager, step, params=ocp.args.StandardRestore(abstract))["params"]
