"""LoRA: adapters on the projections, the base frozen; step 0 is the base, merged == adapted, only adapters are
differentiated, resume, sharding, and the exports that transformers and peft load."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import models
from rankjax.models import lora, peft_adapter, quantized
from rankjax.models.errors import ConfigError
from rankjax.train import checkpointing, loop, restore
from rankjax.train import state as train_state_layout
from rankjax.train.optimizer import learning_rate_schedule
from rankjax.train.train_step import make_train_step
from tests import shared_runs
from tests.helpers import tiny_run_config
from tests.test_train import _assert_trees_close, _batch

SPEC = lora.LoraSpec(rank=4, alpha=8.0)


def _random_adapters(model, seed=1, scale=0.2):
  """Adapters of `model` (a LoRA model) with both factors random: a nonzero update, unlike the initial B = 0."""
  adapters = lora.split(models.init_params(model, jax.random.PRNGKey(0)))[1]
  leaves, tree = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def test_step_zero_is_the_base_and_merged_equals_adapted():
  config = tiny_run_config()
  model = models.build_model(config.model, SPEC)
  full = models.init_params(model, jax.random.PRNGKey(0))
  base, adapters = lora.split(full)
  assert all(not np.any(b) for path, b in lora.items(adapters) if path[-1].endswith(lora.SUFFIX_B))
  # r (fan_in + fan_out) per adapted matrix: q 4*(32+32), k and v 4*(32+16), o 4*(32+32), gate, up, down 4*(32+64)
  assert lora.count_trainable(adapters) == 2 * (256 + 2 * 192 + 256 + 3 * 384)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, config.model.vocab_size, (2, 12)), jnp.int32)
  plain = model.clone(lora=None)
  np.testing.assert_array_equal(model.apply({"params": full}, ids), plain.apply({"params": base}, ids))
  trained = _random_adapters(model)
  adapted = model.apply({"params": lora.combine(base, trained)}, ids)
  merged = plain.apply({"params": lora.merged(base, trained, SPEC)}, ids)
  diff = float(jnp.abs(adapted - merged).max())
  assert diff < 1e-5 * max(1.0, float(jnp.abs(adapted).max())), diff  # float32: only the order of the sums differs
  assert float(jnp.abs(adapted - plain.apply({"params": base}, ids)).max()) > 1e-2  # the adapters do change it


def _eqn_shapes(jaxpr, out=None):
  """The output shapes of every equation of a jaxpr and of the jaxprs inside it (scan, cond, pjit, custom_vjp)."""
  out = [] if out is None else out
  for eqn in jaxpr.eqns:
    out.extend((eqn.primitive.name, tuple(v.aval.shape)) for v in eqn.outvars if hasattr(v.aval, "shape"))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          _eqn_shapes(inner, out)
  return out


def test_only_the_adapters_are_differentiated():
  """No matrix product in the LoRA train step yields an array shaped like a base matrix (a weight gradient is one:
  activations^T x cotangents); the full fine-tuning step has them, so the check can fail."""
  config = tiny_run_config()
  base_model = models.build_model(config.model)
  model = base_model.clone(lora=SPEC)
  schedule = learning_rate_schedule(config.optimizer, 10)
  # 3 x 16 = 48 tokens: no activation [tokens, hidden] or logit chunk [tokens, vocab] is shaped like a matrix
  batch = jax.tree.map(jnp.asarray, _batch(np.random.default_rng(0), 1, 3, 16, config.model.vocab_size))
  mesh = models.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  base = train_state_layout.load_base(config, model, mesh)
  matrix_shapes = {tuple(x.shape) for x in jax.tree.leaves(base) if x.ndim >= 2}
  matrix_shapes |= {s[::-1] for s in matrix_shapes if len(s) == 2}

  def shapes(m, frozen):
    state = loop.create_state(config, m, mesh)
    jaxpr = jax.make_jaxpr(make_train_step(m, config.loss, schedule))(state, batch, None, frozen)
    return {s for name, s in _eqn_shapes(jaxpr.jaxpr) if name == "dot_general" and s in matrix_shapes}

  assert shapes(base_model, None), "the full fine-tuning step should form weight gradients"
  assert not shapes(model, base), shapes(model, base)


def test_dropout_changes_the_step_and_is_seeded():
  config = tiny_run_config()
  schedule = learning_rate_schedule(config.optimizer, 10)
  batch = jax.tree.map(jnp.asarray, _batch(np.random.default_rng(0), 2, 2, 16, config.model.vocab_size))
  mesh = models.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  losses, steps = {}, {}
  for name, dropout, seed in (("none", 0.0, 0), ("a", 0.5, 0), ("a_again", 0.5, 0), ("b", 0.5, 1)):
    model = models.build_model(config.model, lora.LoraSpec(4, 8.0, dropout=dropout))
    state = loop.create_state(config, model, mesh)
    frozen = train_state_layout.load_base(config, model, mesh)
    if (dropout, seed) not in steps:  # "a_again" runs the very program of "a" (one compile)
      steps[dropout, seed] = jax.jit(make_train_step(model, config.loss, schedule, dropout_seed=seed))
    step = steps[dropout, seed]
    for _ in range(2):  # the first step's learning rate is 0 (warmup); the second moves B off zero
      state, _ = step(state, batch, None, frozen)
    losses[name] = float(step(state, batch, None, frozen)[1]["loss"])
  assert losses["a"] == losses["a_again"] and len({losses["none"], losses["a"], losses["b"]}) == 3, losses


@pytest.mark.parametrize("targets, match", [
    ("nothing_here", "matches no projection; it is searched in paths such as layer_0/attn/q"),
    ("embed|lm_head", "the embedding and LM head never take adapters"),
    ("attn/(q", "is not a regular expression"),
])
def test_bad_targets_are_named(targets, match):
  config = tiny_run_config(**{"lora.rank": 4, "lora.targets": targets})
  with pytest.raises(ConfigError, match=match.replace("(", r"\(")):
    lora.validate(config.lora, config.model)


def test_targets_select_paths():
  spec = lora.LoraSpec(2, 4.0, r"layer_1/mlp/(up|down)$")
  assert [p for p in lora.projection_paths(tiny_run_config().model) if spec.applies_to(p)] == \
      ["layer_1/mlp/up", "layer_1/mlp/down"]
  assert lora.LoraSpec(2).applies_to("layer_0/attn/o") and not lora.LoraSpec(2).applies_to("embed/embedding")


# LoRA on (2, 2, 2): adapters split over "tensor" as their kernels are, the base FSDP-sharded (the fused loss under
# shard_map, with the frozen LM head, runs in `lora_run` on the 8-device data mesh). Full fine-tuning on (4, 2, 1):
# its logged loss was 8x the true one until 2026-12-05 (the shard_map path summed the already global loss).
@pytest.mark.parametrize("spec, mesh_shape", [(SPEC, (2, 2, 2)), (None, (4, 2, 1))])
def test_sharded_step_equals_single_device(spec, mesh_shape):
  config = tiny_run_config(**{"loss.name": "ranktuner"})
  model = models.build_model(config.model, spec)
  batch = _batch(np.random.default_rng(1), 1, 8, 16, config.model.vocab_size)
  results = []
  for mesh in (models.make_mesh(1, 1, 1, devices=jax.devices()[:1]), models.make_mesh(*mesh_shape)):
    step = jax.jit(make_train_step(model, config.loss, learning_rate_schedule(config.optimizer, 10), mesh))
    state = loop.create_state(config, model, mesh)
    frozen = train_state_layout.load_base(config, model, mesh) if spec else None
    placed = jax.device_put(batch, loop._batch_sharding(mesh, 8))
    for _ in range(2):
      state, metrics = step(state, placed, None, frozen)
    results.append((state.params, float(metrics["loss"])))
  # atol 1e-5 (a third of a percent of one Adam step of 3e-3): Adam divides near-zero gradients by their own size
  _assert_trees_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-5)
  assert abs(results[0][1] - results[1][1]) < 1e-5 * results[0][1], (results[0][1], results[1][1])


LORA_RUN = {"lora.rank": 4, "lora.alpha": 8.0, "total_steps": 6, "checkpoint_every": 3, "keep_checkpoints": 2,
            "export_hf": True, "optimizer.learning_rate": 1e-2, "eval.every_steps": 6, "eval.num_problems": 4,
            "eval.max_new_tokens": 16, "eval.batch_size": 4, "eval.grading.workers": 1}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  """A finished 6-step LoRA run on the shared 3-step base (checkpoints 3 and 6, HF and PEFT exports)."""
  workdir = str(tmp_path_factory.mktemp("lora") / "run")
  loop.train(tiny_run_config(init_from=shared_runs.three_steps(), **LORA_RUN), workdir)
  return workdir


def test_lora_run_checkpoints_adapters_and_resumes_exactly(lora_run, tmp_path):
  mesh = models.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  config = tiny_run_config(init_from=shared_runs.three_steps(), **LORA_RUN)
  model = loop.build_run_model(config, models.resolve_init_from(config.init_from))
  target = lora.split(checkpointing.params_target(model, mesh))[1]
  final = checkpointing.restore_params(lora_run, target)
  assert all(lora.is_adapter_path(path) for path, _ in lora.items(final))  # the checkpoint holds adapters only
  rows = [json.loads(line) for line in open(os.path.join(lora_run, "metrics.jsonl"), encoding="utf-8")]
  assert "eval/synthetic/pass@1" in rows[-1] and "weight/q50" in rows[-1]  # eval during training, histograms
  with open(os.path.join(lora_run, "checkpoints", "6", "meta", "metadata"), encoding="utf-8") as f:
    assert json.load(f)["lora_base"]["init_from"] == shared_runs.three_steps()
  resumed = shutil.copytree(lora_run, str(tmp_path / "resumed"))
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
  loop.train(config, resumed)
  _assert_trees_close(final, checkpointing.restore_params(resumed, target), rtol=0, atol=0)


def test_lora_run_refuses_another_base_or_rank(lora_run, tmp_path):
  other_base = shared_runs.finished_run(total_steps=2, checkpoint_every=2)
  copy = shutil.copytree(lora_run, str(tmp_path / "copy"))
  shutil.rmtree(os.path.join(copy, "checkpoints", "6"))
  with pytest.raises(ValueError, match="were trained on the base"):
    loop.train(tiny_run_config(init_from=other_base, **LORA_RUN), copy)
  with pytest.raises(ConfigError, match="lora.rank=4, and this run has lora.rank=0"):
    loop.train(tiny_run_config(init_from=shared_runs.three_steps(), **dict(LORA_RUN, **{"lora.rank": 0})), copy)
  with pytest.raises(ConfigError, match="is a LoRA run"):
    loop.train(tiny_run_config(init_from=lora_run), str(tmp_path / "next"))


def test_evaluate_applies_the_adapters_as_the_merged_export_does(lora_run):
  loaded = restore.load_checkpoint(lora_run)
  exported = models.load_params(loaded.model, os.path.join(lora_run, "hf"),
                                models.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  _assert_trees_close(loaded.params, exported, rtol=0, atol=0)
  base = restore.load_checkpoint(shared_runs.three_steps()).params
  assert float(jnp.abs(loaded.params["layer_0"]["attn"]["q"] - base["layer_0"]["attn"]["q"]).max()) > 0
  np.testing.assert_array_equal(loaded.params["embed"]["embedding"], base["embed"]["embedding"])


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_transformers_on_merged_and_peft_on_adapter_equal_rankjax(family, tmp_path):
  pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  from tests.test_hf_interop import _hf_logits, _inputs, _make_checkpoint, _our_logits  # noqa: PLC0415
  base_dir = str(tmp_path / "base")
  _make_checkpoint(family, base_dir)
  base_model = models.build_hf_model(base_dir, jnp.float32)
  model = base_model.clone(lora=SPEC)
  base = models.load_params(base_model, base_dir)
  adapters = _random_adapters(model, scale=0.3)
  ids, mask, positions = _inputs(model.config.vocab_size, left_pad=False)
  ours = _our_logits(model, lora.combine(base, adapters), ids, mask, positions)

  merged_dir, adapter_dir = str(tmp_path / "merged"), str(tmp_path / "adapter")
  models.save_pretrained(base_model, lora.merged(base, adapters, SPEC), merged_dir)
  peft_adapter.save_peft_adapter(model, adapters, adapter_dir, base_dir)
  merged_hf = transformers.AutoModelForCausalLM.from_pretrained(merged_dir, attn_implementation="eager").eval()
  with_adapter = peft.PeftModel.from_pretrained(
      transformers.AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager"), adapter_dir).eval()
  scale = float(np.abs(ours).max())
  for name, hf in (("transformers on the merged export", merged_hf), ("peft on the adapter export", with_adapter)):
    diff = float(np.abs(_hf_logits(hf, ids, mask, positions) - ours).max())
    print(f"{family}: {name}: max |logit diff| = {diff:.2e} (logits up to {scale:.1f})")
    assert diff < 1e-4 * max(1.0, scale), (family, name, diff)


NF4_HALF_GAP = float(np.max(np.diff(quantized.NF4_LEVELS))) / 2  # 0.139: the farthest a weight is from its level


@pytest.mark.parametrize("mode", ["int8", "nf4"])
@pytest.mark.parametrize("shape, in_ndim", [((48, 4, 8), 1), ((4, 8, 48), 2), ((50, 7), 1)])
def test_quantised_kernel_error_is_bounded(mode, shape, in_ndim):
  w = jax.random.normal(jax.random.PRNGKey(0), shape) * 0.05
  q = quantized.quantize(w, mode, in_ndim)
  err = np.abs(np.asarray(quantized.dequantize(q)) - np.asarray(w))
  if mode == "int8":  # half a step of absmax / 127 per output unit
    bound = np.max(np.abs(np.asarray(w)), axis=tuple(range(in_ndim)), keepdims=True) / 127 / 2
    assert q.values.dtype == jnp.int8 and q.nbytes < w.size * 1.2
  else:  # half the widest gap between NF4 levels, times each block's absmax (blocks of 64 of the flattened kernel)
    flat = np.pad(np.asarray(w).reshape(-1), (0, (-w.size) % 64)).reshape(-1, 64)
    bound = np.repeat(np.max(np.abs(flat), axis=1), 64)[:w.size].reshape(shape) * NF4_HALF_GAP
    assert q.nbytes <= w.size // 2 + 4 * (-(-w.size // 64)) + 32
  assert np.all(err <= bound * (1 + 1e-5) + 1e-9), float(np.max(err - bound))


# The forward of the tiny model (random init, std 0.02) with every projection quantised, against float32: int8 within
# 1% of the largest logit, nf4 within 10% (measured 0.25% and 4.9%).
@pytest.mark.parametrize("mode, tolerance", [("int8", 0.01), ("nf4", 0.1)])
def test_quantised_base_logits_are_close(mode, tolerance):
  config = tiny_run_config()
  model = models.build_model(config.model, SPEC)
  base, adapters = lora.split(models.init_params(model, jax.random.PRNGKey(0)))
  ids = jnp.asarray(np.random.default_rng(0).integers(0, config.model.vocab_size, (2, 12)), jnp.int32)
  frozen = quantized.quantize_projections(base, mode, quantized.is_base_projection)
  assert isinstance(frozen["layer_1"]["mlp"]["down"], quantized.QuantizedKernel)
  assert not isinstance(frozen["embed"]["embedding"], quantized.QuantizedKernel)
  ref = model.clone(lora=None).apply({"params": base}, ids)
  got = model.apply(quantized.variables(lora.combine(frozen, adapters)), ids)
  diff, scale = float(jnp.abs(got - ref).max()), float(jnp.abs(ref).max())
  print(f"{mode}: max |logit diff| {diff:.2e} of logits up to {scale:.2f}")
  assert 0 < diff < tolerance * scale


def test_qlora_run_trains_and_its_export_is_what_evaluate_loads(tmp_path):
  workdir = str(tmp_path / "qlora")
  row = loop.train(tiny_run_config(init_from=shared_runs.three_steps(), **dict(
      LORA_RUN, total_steps=2, checkpoint_every=2, **{"lora.quantize": "nf4"})), workdir)
  assert np.isfinite(row["loss"]) and row["grad_norm"] > 0
  loaded = restore.load_checkpoint(workdir)
  exported = models.load_params(loaded.model, os.path.join(workdir, "hf"),
                                models.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  _assert_trees_close(loaded.params, exported, rtol=0, atol=0)
  with pytest.raises(ConfigError, match="needs adapters"):
    lora.validate(tiny_run_config(**{"lora.quantize": "int8"}).lora, tiny_run_config().model)
