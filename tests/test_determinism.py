"""Determinism: the same config and seed give bit-identical runs on CPU; another seed changes the data order
and the initial parameters. And the loop's side of preemption, in process."""

import os
import signal

import jax
import numpy as np
import pytest

from experiments import fault_injection as fi
from rankjax import models
from rankjax.data import stream
from rankjax.train import loop, preemption
from tests.helpers import tiny_run_config
from tests.shared_runs import THREE_STEPS, three_steps


def test_same_config_and_seed_give_bit_identical_runs(tmp_path):
  b = str(tmp_path / "b")
  loop.train(tiny_run_config(**THREE_STEPS), b)
  assert fi.differences(three_steps(), b) == []  # the shared run: trained earlier in this process, or just now


def test_another_seed_changes_the_data_order_and_the_init(tmp_path):
  def first_batch(seed):
    config = tiny_run_config(seed=seed)
    _, data = stream.make_pipeline(config, str(tmp_path / "tok"), config.model.vocab_size)
    try:
      return data.next_batch()["inputs"]
    finally:
      data.close()

  assert not np.array_equal(first_batch(0), first_batch(1))
  np.testing.assert_array_equal(first_batch(1), first_batch(1))
  # data.shuffle_seed >= 0 pins the order whatever the seed
  pinned = [stream.pipeline_options(tiny_run_config(seed=s, **{"data.shuffle_seed": 5})).shuffle_seed for s in (0, 1)]
  assert pinned == [5, 5]

  config = tiny_run_config()
  model = models.build_model(config.model)
  mesh = loop.make_run_mesh(config)
  p0 = loop.create_state(tiny_run_config(seed=0), model, mesh).params
  p1 = loop.create_state(tiny_run_config(seed=1), model, mesh).params
  assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)))


def test_a_stop_request_saves_that_step_and_raises_preempted(tmp_path, monkeypatch):
  monkeypatch.setattr(preemption.PreemptionWatch, "should_stop", lambda self, step: step == 2)
  workdir = str(tmp_path / "run")
  with pytest.raises(preemption.Preempted, match="stopped after step 2, checkpoint of step 2 saved") as info:
    loop.train(tiny_run_config(total_steps=3, checkpoint_every=3), workdir)  # step 2 is no checkpoint step
  assert info.value.step == 2
  assert fi.latest_checkpoint(workdir) == 2 and fi.logged_steps(workdir) == 2
  monkeypatch.undo()
  loop.train(tiny_run_config(total_steps=3, checkpoint_every=3), workdir)
  assert fi.logged_steps(workdir) == 3 and fi.latest_checkpoint(workdir) == 3


def test_watch_records_the_first_signal_and_gives_the_second_its_default_action():
  before = signal.getsignal(signal.SIGINT)
  with preemption.PreemptionWatch() as watch:
    assert not watch.requested
    os.kill(os.getpid(), signal.SIGINT)
    assert watch.requested and watch.reason == "SIGINT"
    assert watch.should_stop(1)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is before


def test_a_signal_during_start_up_exits_before_any_step(tmp_path, monkeypatch):
  monkeypatch.setattr(preemption.PreemptionWatch, "requested", property(lambda self: True))
  workdir = str(tmp_path / "run")
  with pytest.raises(preemption.Preempted, match="stopped during start-up, before step 1; there is no checkpoint"):
    loop.train(tiny_run_config(total_steps=4), workdir)
  assert fi.latest_checkpoint(workdir) is None and fi.logged_steps(workdir) == 0
