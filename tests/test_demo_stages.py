"""The demo's stage timings, and what keeps its stages short: a fine-tuning run restores its base's params without a
random init, and the teacher-forced evaluation compiles once for every model it scores."""

import jax
import numpy as np

from rankjax import demo, losses, models
from rankjax.eval import answer_accuracy
from rankjax.train import checkpointing, loop
from tests.helpers import tiny_run_config


def _saved_run(workdir: str, seed: int):
  """A checkpoint (step 0) of a fresh state of tiny_run_config(seed=seed) in `workdir`; returns that state."""
  config = tiny_run_config(seed=seed)
  model = models.build_model(config.model)
  state = loop.create_state(config, model, loop.make_run_mesh(config))
  manager = checkpointing.make_manager(workdir, async_writes=False)
  checkpointing.save(manager, state)
  manager.close()
  return state


def test_init_from_a_workdir_restores_its_params_in_their_shardings_without_a_random_init(tmp_path, monkeypatch):
  base = _saved_run(str(tmp_path / "base"), seed=3)
  config = tiny_run_config(init_from=str(tmp_path / "base"))
  model = models.build_model(config.model)
  mesh = loop.make_run_mesh(config)

  def no_random_init(*args, **kwargs):
    raise AssertionError("init_from a workdir initialised random params")
  monkeypatch.setattr(models, "init_params", no_random_init)
  state = loop.create_state(config, model, mesh)
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(base.params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  shardings = models.model_shardings(model, mesh)
  assert jax.tree.leaves(jax.tree.map(lambda x, s: x.sharding == s, state.params, shardings)) == \
      [True] * len(jax.tree.leaves(shardings))
  assert int(state.step) == 0


def _eval_batch(rng, b, t, v):
  tokens = rng.integers(3, v, size=(b, t + 1)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": np.ones((b, t), np.float32),
          "segment_ids": np.ones((b, t), np.int32), "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))}


def test_teacher_forced_aux_traces_once_for_every_params_and_matches_the_one_off_call(monkeypatch):
  config = tiny_run_config(**{"loss.name": "ranktuner", "loss.diagnostics": True})
  model = models.build_model(config.model)
  batch = _eval_batch(np.random.default_rng(0), 4, 16, config.model.vocab_size)
  params = [models.init_params(model, jax.random.PRNGKey(s)) for s in (0, 1)]
  expected = [answer_accuracy.teacher_forced_aux(model, p, batch, config.loss) for p in params]

  traces = []
  head_loss = losses.head_loss
  monkeypatch.setattr(losses, "head_loss", lambda *a, **k: traces.append(1) or head_loss(*a, **k))
  aux = answer_accuracy.make_teacher_forced_aux(model, config.loss)
  got = [aux(p, batch) for p in params]
  assert len(traces) == 1  # one program for both params
  assert got == expected and got[0] != got[1]
  assert {"mean_ranktuner_weight", "mean_nll"} <= set(got[0])


def test_stage_clock_records_the_seconds_since_the_previous_lap(monkeypatch, capsys):
  times = iter([100.0, 102.5, 110.0])
  monkeypatch.setattr(demo.time, "time", lambda: next(times))
  clock = demo.StageClock()
  clock.lap("pretraining")
  clock.lap("fine-tuning sft")
  assert clock.seconds == {"pretraining": 2.5, "fine-tuning sft": 7.5}
  assert "[demo] fine-tuning sft: 7.5 s" in capsys.readouterr().out
