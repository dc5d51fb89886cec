"""Trained tiny runs shared by several test files: each is trained once per test process, on first use.

Tests only read a shared run (its checkpoints, metrics, evaluations and export); whatever they write goes elsewhere.
Under xdist each worker that needs a run trains its own copy.
"""

# 4 steps with a checkpoint, and an evaluation on the synthetic benchmark, every 2 (so steps 1 and 3 have none), and
# an HF export: enough for the notebooks, the noise diagnostic, the eval harness and the eval during training.
TINY_RUN_OVERRIDES = {"total_steps": 4, "checkpoint_every": 2, "export_hf": True, "eval.every_steps": 2,
                      "eval.num_problems": 4, "eval.max_new_tokens": 16, "eval.batch_size": 4,
                      "eval.grading.workers": 1}
_built = {}


def tiny_trained_run(tmp_path_factory) -> str:
  """The workdir (a path) of `tiny_run_config(**TINY_RUN_OVERRIDES)` trained to the end; its export is in
  workdir/hf. Trained by the first call in this process (`tmp_path_factory`: pytest's session fixture), reused
  after."""
  if "tiny" not in _built:
    from rankjax.train.loop import train  # noqa: PLC0415 (JAX starts only when a test needs the run)
    from tests.helpers import tiny_run_config  # noqa: PLC0415
    workdir = tmp_path_factory.mktemp("tiny_trained_run") / "run"
    train(tiny_run_config(**TINY_RUN_OVERRIDES), str(workdir))
    _built["tiny"] = str(workdir)
  return _built["tiny"]
