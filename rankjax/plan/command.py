"""python -m rankjax.plan --config=configs/NAME.py --topology=v5p-8 [--workdir=DIR] [--config.x=y ...]

Compiles the run's train step (and the evaluation engine's prefill and decode) for a TPU slice on this machine,
which needs no TPU, only libtpu (`pip install -e ".[tpu]"`), and writes DIR/plan.json and DIR/plan.md (default DIR:
plans/<config>-<topology>). Prints plan.md.

Exit status: 0 when the step (and the engine) fit the chips' HBM; 3 when not (one line on stderr: by how much and
what to change; plan.json/plan.md still say what was measured when XLA got that far); 2 for a bad flag, config
value or a mesh that does not tile the slice (one line); 1 on an error, such as libtpu missing.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags


DOES_NOT_FIT_EXIT = 3
_FLAGS = {}


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines the command's flags in `flag_values` (only when run as a command)."""
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "Path to a training config file (configs/NAME.py).", lock_config=True, flag_values=flag_values)
  _FLAGS["topology"] = flags.DEFINE_string("topology", None, "TPU slice, e.g. v5p-8, v4-16, v5e-32, v6e-8 "
                                           "(rankjax.plan.topologies).", flag_values=flag_values)
  _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Where plan.json and plan.md go (default "
                                          "plans/<config>-<topology>).", flag_values=flag_values)
  _FLAGS["mfu"] = flags.DEFINE_float("mfu", 0.4, "Model FLOPs utilisation assumed for the roofline step time.",
                                     flag_values=flag_values)
  _FLAGS["sampling"] = flags.DEFINE_bool("sampling", True, "Also plan the evaluation engine (config.eval).",
                                         flag_values=flag_values)
  _FLAGS["prompt_len"] = flags.DEFINE_integer("prompt_len", 1024, "Prompt tokens the engine's plan assumes.",
                                              flag_values=flag_values)
  flags.mark_flags_as_required(["config", "topology"], flag_values=flag_values)


def make_plan(config, topology_name: str, mfu: float = 0.4, sampling: bool = True, prompt_len: int = 1024,
              config_name: str = "", command: str = "") -> dict:
  """The plan of `config` on `topology_name` (see the module docstring): {"config", "command", "train",
  "sampling"}; raises train_plan.DoesNotFit (with `.plan` set to this dict when XLA compiled the step)."""
  from rankjax.plan import topologies  # noqa: PLC0415
  from rankjax.models.errors import ConfigError  # noqa: PLC0415
  try:
    topology = topologies.get(topology_name)
  except ValueError as e:
    raise ConfigError(f"--topology: {e}") from e
  topologies.set_quiet_libtpu_env(topology)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this machine's own backend: no TPU to look for
  from rankjax.plan import sampling_plan, train_plan  # noqa: PLC0415 (after the environment above)
  devices = topologies.devices(topology)
  plan = {"config": config_name, "command": command, "train": None, "sampling": None}
  if "rl" in config:  # a GRPO config: its rollout engine, behaviour pass and update (rankjax/plan/rl_plan.py)
    from rankjax.plan import rl_plan  # noqa: PLC0415
    try:
      plan["rl"] = rl_plan.plan_rl(config, topology, devices, sampling)
    except train_plan.DoesNotFit as e:
      e.plan = {**plan, **(e.plan or {})}
      raise
    return plan
  try:
    plan["train"] = train_plan.plan_train(config, topology, devices, mfu)
  except train_plan.DoesNotFit as e:
    plan["train"] = e.plan
    e.plan = plan if e.plan else None
    raise
  if sampling:
    from rankjax import models  # noqa: PLC0415
    model = train_plan.plan_model(config)
    mesh = models.make_mesh(*(int(config.mesh[a]) for a in models.MESH_AXES), devices=devices)
    plan["sampling"] = sampling_plan.plan_sampling(model, config.eval, mesh, topology.hbm_bytes, prompt_len)
    if not plan["sampling"]["fits"]:
      over = -plan["sampling"]["memory_per_chip_bytes"]["margin"]
      raise train_plan.DoesNotFit(
          f"the evaluation engine does not fit {topology.name}: it needs {over / 1024 ** 3:.2f} GiB per chip more than "
          f"the HBM; lower config.eval.batch_size (slots) or config.eval.max_new_tokens", plan)
  return plan


def write_plan(plan: dict, workdir: str) -> None:
  """DIR/plan.json and DIR/plan.md."""
  from rankjax.rundir import atomic  # noqa: PLC0415
  os.makedirs(workdir, exist_ok=True)
  atomic.write_text(os.path.join(workdir, "plan.json"), json.dumps(plan, indent=2, sort_keys=True))
  atomic.write_text(os.path.join(workdir, "plan.md"), render(plan))


def render(plan: dict) -> str:
  """plan.md's text: an SFT plan (`markdown.render`) or an RL one (`rl_plan.render`)."""
  if plan.get("rl"):
    from rankjax.plan import rl_plan  # noqa: PLC0415
    return rl_plan.render(plan)
  from rankjax.plan import markdown  # noqa: PLC0415
  return markdown.render(plan)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # JAX logs at INFO that this machine has no TPU backend: it needs none
  from rankjax.plan import train_plan  # noqa: PLC0415
  config_name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
  topology = _FLAGS["topology"].value
  workdir = _FLAGS["workdir"].value or os.path.join("plans", f"{config_name}-{topology}")
  command = shlex.join(["python", "-m", "rankjax.plan", *sys.argv[1:]])
  try:
    plan = make_plan(_FLAGS["config"].value, topology, _FLAGS["mfu"].value, _FLAGS["sampling"].value,
                     _FLAGS["prompt_len"].value, config_name, command)
  except train_plan.DoesNotFit as e:
    if e.plan:
      write_plan(e.plan, workdir)
    print(f"rankjax.plan: {e} (plan: {workdir})" if e.plan else f"rankjax.plan: {e}", file=sys.stderr, flush=True)
    sys.exit(DOES_NOT_FIT_EXIT)
  except RuntimeError as e:
    from rankjax.plan.topologies import LIBTPU_MISSING  # noqa: PLC0415
    if str(e) == LIBTPU_MISSING:
      print(f"rankjax.plan: {e}", file=sys.stderr, flush=True)
      sys.exit(1)
    raise
  write_plan(plan, workdir)
  print(render(plan), flush=True)
  print(f"[rankjax] wrote {workdir}/plan.json and plan.md", flush=True)
