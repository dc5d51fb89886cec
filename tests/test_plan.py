"""rankjax.plan: a run's real train step and sampling engine compiled for TPU slices on this CPU (libtpu, no TPU).

Each test compiles as little as it can (a TPU compile of even a tiny step takes 10-30 s here): one module fixture
compiles the tiny step for v5e-4 at two micro-batch sizes, one runs the command end to end on v5p-8.
"""

import json
import os
import subprocess
import sys

import jax
import pytest
from jax.sharding import PartitionSpec as P

from rankjax import models
from rankjax.plan import collectives, topologies
from rankjax.train import loop, state as train_state_layout
from rankjax.train.config import load_config_file, with_overrides

TINY = {"mesh.data": 1, "mesh.fsdp": -1, "data.batch_size": 16, "data.seq_len": 64, "loss.histograms": False}


def _libtpu():
  try:
    import libtpu  # noqa: F401
  except ImportError:
    if os.environ.get("CI") == "true":
      pytest.fail("CI installs the tpu extra (make test): libtpu is missing")
    pytest.skip("libtpu not installed (pip install -e '.[tpu]')")


def tiny_config(**overrides):
  return with_overrides(load_config_file("configs/synthetic_sft.py"), {**TINY, **overrides})


@pytest.fixture(scope="module")
def v5e_plans():
  """The tiny step planned on v5e-4 with micro-batches of 4 and 16 sequences (2 micro-steps each)."""
  _libtpu()
  from rankjax.plan import command
  small = command.make_plan(tiny_config(grad_accum_steps=2, **{"data.batch_size": 8}), "v5e-4", sampling=False)
  large = command.make_plan(tiny_config(grad_accum_steps=2, **{"data.batch_size": 32}), "v5e-4", sampling=False)
  return small["train"], large["train"]


def test_topology_table():
  for name in topologies.names():
    t = topologies.get(name)
    cores = int(name.split("-")[1])
    assert t.chips == cores // t.generation.cores_per_chip_in_name
  assert topologies.get("v5p-8").libtpu_name == "v5:2x2x1" and topologies.get("v5p-8").chips == 4
  assert topologies.get("v5e-4").libtpu_name == "v5e:2x2"
  assert topologies.get("v4-8").hbm_bytes == 32 * 1024 ** 3
  with pytest.raises(ValueError, match="v5p-8"):
    topologies.get("v5p-7")


def test_collectives_counted_per_loop_iteration():
  hlo = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %x = f32[8]{0} get-tuple-element(%p), index=1
  %ag = f32[32]{0} all-gather(%x), dimensions={0}, metadata={op_name="jit(step)/mlp/dot_general" source_line=3}
  ROOT %t = (s32[], f32[8]) tuple(%i, %x)
}

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]) parameter(0)
  %c = s32[] constant(5)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%all-reduce-scatter.1 (input: f32[16]) -> f32[4] {
  %input = f32[16]{0} parameter(0)
  %ar = f32[16]{0} all-reduce(%input), to_apply=%add
  ROOT %ds = f32[4]{0} dynamic-slice(%ar, %z), dynamic_slice_sizes={4}
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %w = (s32[], f32[8]) while(%tuple), condition=%cond, body=%body
  %rs = f32[4]{0} fusion(%g), kind=kCustom, calls=%all-reduce-scatter.1
  %s = (bf16[2], bf16[4]) all-reduce-start(%a), to_apply=%add
  %d = bf16[4]{0} all-reduce-done(%s)
  ROOT %r = f32[8]{0} copy(%a)
}
"""
  stats = collectives.collective_stats(hlo)
  assert stats["all-gather"] == {"count": 5, "bytes": 5 * 32 * 4}
  assert stats["reduce-scatter"] == {"count": 1, "bytes": 16}
  assert stats["all-reduce"] == {"count": 1, "bytes": 8}  # the start's output buffer; the done is not counted
  assert stats["partial"] is False
  top = stats["largest"][0]
  assert (top["kind"], top["shape"], top["op_name"], top["count"], top["bytes"]) == (
      "all-gather", "f32[32]{0}", "jit(step)/mlp/dot_general", 5, 640)
  assert [g["kind"] for g in stats["largest"]] == ["all-gather", "reduce-scatter", "all-reduce"]


@pytest.mark.slow
def test_tiny_step_fits_and_bytes_grow_with_the_micro_batch(v5e_plans):
  small, large = v5e_plans
  for plan in v5e_plans:
    assert plan["fits"] and plan["chips"] == 4 and plan["device_kind"] == "TPU v5 lite"
    mem = plan["memory_per_chip_bytes"]
    assert 0 < mem["peak"] < mem["hbm"] == 16 * 1024 ** 3
    assert mem["parameters"] * 2 == pytest.approx(mem["optimizer_state"], rel=0.01)  # float32 Adam: mu and nu
    assert plan["compile_seconds"] > 0 and plan["model_flops_per_step"] > 0
    assert plan["collectives_per_step"]["all-gather"]["count"] > 0  # FSDP gathers the weights
  assert small["batch"]["micro_batch"] == 4 and large["batch"]["micro_batch"] == 16
  assert large["memory_per_chip_bytes"]["temporaries"] > small["memory_per_chip_bytes"]["temporaries"]
  assert large["memory_per_chip_bytes"]["parameters"] == small["memory_per_chip_bytes"]["parameters"]
  # FSDP over the 4 chips: each holds a quarter of the sharded parameters
  assert small["memory_per_chip_bytes"]["parameters"] < small["parameters"] * 4 / 2


@pytest.mark.slow
def test_a_qlora_step_plans_the_adapters_and_the_quantised_base():
  _libtpu()
  from rankjax.plan import command
  plan = command.make_plan(tiny_config(**{"lora.rank": 4, "lora.quantize": "nf4"}), "v5e-4", sampling=False)["train"]
  mem, lora_plan = plan["memory_per_chip_bytes"], plan["lora"]
  assert plan["fits"] and lora_plan["rank"] == 4 and lora_plan["quantize"] == "nf4"
  assert 0 < plan["parameters"] < lora_plan["frozen_parameters"] / 4  # only the adapters train
  assert mem["parameters"] * 2 == pytest.approx(mem["optimizer_state"], rel=0.01)  # Adam's moments: adapters only
  print({k: mem[k] for k in ("parameters", "frozen_base", "optimizer_state", "peak")}, lora_plan)
  assert 0 < mem["frozen_base"] < 4 * lora_plan["frozen_parameters"]  # below float32 storage of the whole base


def test_a_model_too_big_for_the_chip_is_refused_in_one_line():
  _libtpu()
  from rankjax.plan import command, train_plan
  big = tiny_config(**{"model.vocab_size": 262144, "model.hidden_size": 8192, "model.num_layers": 1,
                       "model.num_heads": 8, "model.num_kv_heads": 8, "model.mlp_dim": 256, "mesh.fsdp": 1,
                       "mesh.data": -1, "data.batch_size": 4, "data.seq_len": 32})
  with pytest.raises(train_plan.DoesNotFit) as e:
    command.make_plan(big, "v5e-4", sampling=False)
  message = str(e.value)
  assert "\n" not in message and "v5e-4" in message and "GiB per chip more than the 16 GiB" in message
  assert "config.mesh.fsdp=-1" in message


def test_a_mesh_that_does_not_tile_the_slice_is_the_mesh_error_of_main():
  _libtpu()
  from rankjax.models.errors import ConfigError
  from rankjax.plan import command
  with pytest.raises(ConfigError, match=r"data\*fsdp\*tensor = 8 but this run has 4 devices"):
    command.make_plan(tiny_config(**{"mesh.fsdp": 8}), "v5p-8", sampling=False)


def test_planned_shardings_equal_those_of_a_real_run_on_8_cpu_devices():
  """The abstract state the plan compiles and the state `rankjax.main` creates (`loop.create_state`, 8 CPU devices,
  the same mesh) have the same shardings leaf by leaf; the batch's too; and the step compiled for v4-16 (8 chips)
  takes its inputs in exactly those shardings."""
  _libtpu()
  config = tiny_config(**{"mesh.fsdp": 4, "mesh.data": 2})
  model = models.build_model(config.model)
  cpu_mesh = loop.make_run_mesh(config)
  real = loop.create_state(config, model, cpu_mesh)
  planned = train_state_layout.abstract_state(config, model, cpu_mesh)
  describe = lambda state: [(x.shape, x.dtype, _normal(x.sharding.spec)) for x in jax.tree.leaves(state)]  # noqa: E731
  assert jax.tree.structure(real.opt_state) == jax.tree.structure(planned.opt_state)
  assert describe(real) == describe(planned)
  assert any(spec for _, _, spec in describe(real))  # FSDP shards some

  topology = topologies.get("v4-16")
  devices = topologies.devices(topology)
  tpu_mesh = models.make_mesh(2, 4, 1, devices=devices)
  tpu_state = train_state_layout.abstract_state(config, model, tpu_mesh)
  shardings = jax.tree.map(lambda s: s.sharding, tpu_state)
  batch_sharding = train_state_layout.batch_sharding(tpu_mesh, 16, process_count=1, quiet=True)
  inputs = train_state_layout.abstract_step_inputs(config, tpu_mesh, batch_sharding)
  compiled = train_state_layout.jit_train_step(config, model, shardings, tpu_mesh).lower(tpu_state, *inputs).compile()
  got = [_normal(s.spec) for s in jax.tree.leaves(compiled.input_shardings[0])]
  want = ([_normal(x.sharding.spec) for x in jax.tree.leaves(real)]
          + [_normal(loop._batch_sharding(cpu_mesh, 16).spec)] * len(train_state_layout.BATCH_DTYPES) + [()] * 3)
  assert got == want


def _normal(spec: P) -> tuple:
  """A PartitionSpec without trailing Nones (P('fsdp', None) and P('fsdp') shard alike)."""
  parts = list(spec)
  while parts and parts[-1] is None:
    parts.pop()
  return tuple(parts)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_command_end_to_end_writes_plan_json_and_md(tmp_path, timeouts):
  _libtpu()
  out = tmp_path / "plan"
  cmd = [sys.executable, "-m", "rankjax.plan", "--config=configs/synthetic_sft.py", "--topology=v5p-8",
         f"--workdir={out}", "--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.data.seq_len=64",
         "--config.eval.batch_size=8", "--config.eval.max_new_tokens=32", "--prompt_len=32"]
  limit = timeouts.calibrated(floor_s=600, calibrations=60)
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=limit.seconds,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 0, result.stderr[-3000:]
  plan = json.loads((out / "plan.json").read_text())
  assert plan["train"]["fits"] and plan["sampling"]["fits"]
  assert plan["train"]["topology"] == "v5p-8" and plan["train"]["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert plan["sampling"]["memory_per_chip_bytes"]["kv_cache"] > 0
  text = (out / "plan.md").read_text()
  assert "## Train step: fits" in text and "## Sampling engine: fits" in text and "all-gather" in text
  assert "Roofline at 40% MFU" in result.stdout

  bad = subprocess.run(cmd[:4] + ["--topology=v5p-7"], capture_output=True, text=True, timeout=limit.seconds,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert bad.returncode == 2 and "unknown TPU topology 'v5p-7'" in bad.stderr


def test_xla_out_of_memory_messages_are_read():
  from rankjax.plan.train_plan import oom_excess
  gib = 1024 ** 3
  assert oom_excess("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
                    "(45.12G) exceeds available HBM (15.75G).", gib) == pytest.approx((45.12 - 15.75 + 1) * gib, rel=1e-6)
  assert oom_excess("Ran out of memory in memory space hbm. Used 120.5G of 95.74G hbm. Exceeded hbm capacity by "
                    "24.76G.", 0) == pytest.approx(24.76 * gib, rel=1e-6)
  assert oom_excess("INTERNAL: something else", 0) is None


def test_a_micro_batch_smaller_than_the_batch_ways_is_flagged_and_advised():
  from rankjax.plan import markdown, train_plan  # noqa: PLC0415
  config = tiny_config(grad_accum_steps=8, **{"data.batch_size": 64})  # 8 sequences per micro-step
  assert train_plan.batch_ways(config, 32) == 32 and train_plan.batch_ways(config, 8) == 8
  advice = train_plan._advice(config, topologies.get("v5e-32"), 2 ** 30)
  assert "a micro-batch that divides among the 32 batch ways (now 8" in advice and "smaller micro-batch" not in advice
  assert "config.grad_accum_steps=16: 4 sequences" in train_plan._advice(config, topologies.get("v5e-4"), 2 ** 30)
  plan = {"config": "c", "command": "x", "train": {
      "topology": "v5e-32", "chips": 32, "device_kind": "TPU v5 lite", "versions": {"jax": "0", "libtpu": "0"},
      "fits": True, "memory_per_chip_bytes": dict.fromkeys(("parameters", "optimizer_state", "batch", "outputs_new",
                                                            "temporaries", "code", "peak", "hbm", "margin"), 0),
      "batch": {"global_sequences": 64, "seq_len": 64, "grad_accum_steps": 8, "micro_batch": 8},
      "parameters": 1, "model": {"param_dtype": "float32", "dtype": "float32", "remat": "none"},
      "loss": {"name": "sft", "form": ""}, "mesh": {"data": 1, "fsdp": 32, "tensor": 1}, "batch_sharding": "P()",
      "batch_replicated": True, "model_flops_per_step": 1.0, "xla": {"flops_per_chip": 1.0, "note": "n"},
      "roofline": {"mfu": 0.4, "peak_flops_per_chip": 1e12, "step_seconds": 1.0, "tokens_per_second": 1.0,
                   "step_seconds_at_peak": 0.4},
      "collectives_per_step": {"all-gather": {"count": 0, "bytes": 0}, "partial": False, "largest": []},
      "compile_seconds": 1.0, "lower_seconds": 1.0}}
  assert "does not divide among the 32 batch ways, so every chip computes all of it" in markdown.render(plan)


def test_an_rl_step_plans_its_three_programs():
  """A GRPO config plans the rollout engine, the behaviour pass and the update; the reference copy (beta > 0, full
  fine-tuning) is held on every chip; plan.md says which program peaks."""
  _libtpu()
  from rankjax.plan import command
  from rankjax.rl import config as rl_config
  config = tiny_config()
  with config.unlocked():
    config.rl = rl_config.default_config()
  config = with_overrides(config, {"rl.prompts_per_step": 4, "rl.num_generations": 4, "rl.max_new_tokens": 16,
                                   "rl.beta": 0.04, "data.split": "finetune"})
  plan = command.make_plan(config, "v5e-4", sampling=True, config_name="tiny_rl", command="test")
  rl = plan["rl"]
  assert rl["fits"] and rl["rows"] == 16 and rl["rows_sharded"]
  held = rl["held_per_chip_bytes"]
  assert held["reference"] == held["parameters"] > 0
  assert held["optimizer_state"] == pytest.approx(2 * held["parameters"], rel=0.01)  # Adam (+ its step count)
  assert rl["update"]["temporaries"] > 0 and rl["engine"]["memory_per_chip_bytes"]["kv_cache"] > 0
  assert rl["peak"] == max(rl["behaviour"]["peak_with_state"], rl["update"]["peak_with_state"],
                           rl["engine"]["peak_with_state"])
  text = command.render(plan)
  assert text.startswith("# RL plan: tiny_rl on v5e-4") and f"in the {rl['peak_program']} program" in text
