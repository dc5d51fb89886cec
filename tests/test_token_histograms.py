"""Token histograms and quantiles (rankjax.losses.token_histograms), their TensorBoard and metrics.jsonl output, and
the per-token dump (`loss.dump_tokens`)."""

import glob
import json
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import losses
from rankjax.losses import token_histograms as th
from rankjax.train import loop, token_dump
from rankjax.train.metrics_writer import read_metrics
from tests.helpers import loss_config, tiny_run_config


def _samples(name, rng, n):
  grid = th.GRIDS[name]
  if grid.scale == "linear":
    return grid.lo + (grid.hi - grid.lo) * rng.uniform(0, 1, n) ** 2  # skewed towards lo
  return np.exp2(rng.normal((grid.lo + grid.hi) / 2, (grid.hi - grid.lo) / 12, n))


@pytest.mark.parametrize("name", list(th.GRIDS))
def test_quantiles_within_one_bin_of_numpy(name):
  grid = th.GRIDS[name]
  values = _samples(name, np.random.default_rng(0), 5000).astype(np.float32)
  mask = np.ones_like(values)
  hist = th.token_histogram(name, jnp.asarray(values), jnp.asarray(mask))
  counts = np.asarray(hist[th.key(name, "counts")])
  assert counts.sum() == values.size
  lo, hi = float(hist[th.key(name, "min")]), float(hist[th.key(name, "max")])
  assert (lo, hi) == (values.min(), values.max())
  np.testing.assert_allclose(float(hist[th.key(name, "sum")]), values.astype(np.float64).sum(), rtol=1e-4)
  got = th.quantiles(counts, lo, hi, grid)
  want = np.quantile(values.astype(np.float64), th.QUANTILES)
  f = (lambda x: np.asarray(x)) if grid.scale == "linear" else np.log2
  width = (grid.hi - grid.lo) / grid.bins
  np.testing.assert_allclose(f(np.asarray(got, np.float64)), f(want), atol=1.01 * width)
  # The jitted (jnp) path gives the numpy path's numbers.
  got_jnp = th.quantiles(jnp.asarray(counts), jnp.float32(lo), jnp.float32(hi), grid)
  np.testing.assert_allclose(np.asarray(got_jnp, np.float64), np.asarray(got, np.float64), rtol=1e-5)


def test_one_bin_batch_gets_quantiles_between_its_min_and_max_and_empty_is_nan():
  grid = th.GRIDS["entropy_bits"]
  values = np.linspace(8.8910, 8.8960, 101, dtype=np.float32)  # all inside one 0.05-bit bin
  hist = th.token_histogram("entropy_bits", jnp.asarray(values), jnp.ones(101))
  q = th.quantile_metrics(hist)
  np.testing.assert_allclose(float(q["entropy_bits/q50"]), float(np.median(values)), atol=1e-4)
  assert float(q["entropy_bits/q01"]) < float(q["entropy_bits/q99"])
  empty = th.token_histogram("entropy_bits", jnp.asarray(values), jnp.zeros(101))
  assert all(np.isnan(float(v)) for k, v in th.quantile_metrics(empty).items() if k != "entropy_bits/min"
             and k != "entropy_bits/max")
  assert len(th.quantiles(np.zeros(grid.bins), 0.0, 0.0, grid)) == len(th.QUANTILES)


def test_loss_histograms_count_supervised_tokens_only_and_values_match_token_weights():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(3, 7, 50)) * 3, jnp.float32)
  targets = jnp.asarray(rng.integers(0, 50, (3, 7)))
  mask = np.ones((3, 7), np.float32)
  mask[0, :4] = 0
  targets = targets.at[0, 0].set(-100)  # off the mask: ignored
  config = loss_config(histograms=True, name="ranktuner")
  _, aux = losses.weighted_loss(logits, targets, jnp.asarray(mask), config)
  assert set(th.names_in(aux)) == {"weight", "prob", "entropy_bits", "rank", "expected_rank", "relative_scale"}
  w = np.asarray(losses.token_weights(logits, targets, jnp.asarray(mask), config))[mask > 0]
  assert float(aux["hist/weight/counts"].sum()) == mask.sum()
  np.testing.assert_allclose(float(aux["hist/weight/max"]), w.max(), rtol=1e-6)
  np.testing.assert_allclose(float(aux["hist/weight/sum"]), w.sum(), rtol=1e-5)
  # Without diagnostics, a scheme computes only the statistics its weights need: SFT none beyond p_t.
  _, aux = losses.weighted_loss(logits, targets, jnp.asarray(mask), loss_config(histograms=True, name="sft",
                                                                                diagnostics=False))
  assert set(th.names_in(aux)) == {"weight", "prob"}
  _, aux = losses.weighted_loss(logits, targets, jnp.asarray(mask), loss_config())
  assert not th.names_in(aux)


def _tensorboard_histogram_tags(logdir):
  """{tag: [steps]} of the histogram summaries in the event files under `logdir` (TFRecord framing)."""
  from tensorboardX.proto import event_pb2
  found = {}
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    data = open(path, "rb").read()
    i = 0
    while i < len(data):
      (length,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
      i += 12 + length + 4
      for value in event.summary.value:
        if value.HasField("histo"):
          assert value.histo.num > 0 and len(value.histo.bucket) == len(value.histo.bucket_limit)
          found.setdefault(value.tag, []).append(event.step)
  return found


def test_training_writes_quantiles_tensorboard_histograms_and_token_dumps(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_run_config(**{"total_steps": 4, "log_every": 2, "loss.name": "ranktuner", "loss.diagnostics": True,
                              "loss.dump_tokens": 2, "loss.dump_sequences": 2})
  loop.train(config, workdir)
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == [2, 4]
  ranktuner_statistics = [n for n in th.GRIDS if n != "anchor_kl"]  # asft's KL: tests/test_anchored_training.py
  for name in ranktuner_statistics:
    for q in ("q01", "q50", "q99", "min", "max", "mean"):
      assert isinstance(rows[-1][f"{name}/{q}"], float), f"{name}/{q}"
    assert rows[-1][f"{name}/min"] <= rows[-1][f"{name}/q50"] <= rows[-1][f"{name}/max"]
  assert not any(k.startswith(("hist/", "dump/")) for k in rows[-1])
  tags = _tensorboard_histogram_tags(os.path.join(workdir, "tensorboard"))
  assert {f"tokens/{n}" for n in ranktuner_statistics} <= set(tags) and tags["tokens/weight"] == [2, 4]

  dumps = sorted(os.listdir(os.path.join(workdir, token_dump.DUMP_DIR)))
  assert dumps == ["step_0000002.jsonl", "step_0000004.jsonl"]
  records = token_dump.read_token_dump(os.path.join(workdir, token_dump.DUMP_DIR, dumps[-1]))
  assert records and {r["sequence"] for r in records} <= {0, 1} and {r["step"] for r in records} == {4}
  for r in records:
    assert r["rank"] >= 1 and 0 < r["prob"] <= 1 and r["entropy_bits"] >= 0 and isinstance(r["token"], str)
    np.testing.assert_allclose(r["weight"], r["prob"] * r["relative_scale"], rtol=1e-4)  # prob base: w = p S
  json.dumps(records)  # plain JSON types only


def test_token_records_skip_unsupervised_positions_and_missing_statistics():
  dump = {"mask": np.array([[0, 1, 1]]), "target": np.array([[5, 6, 7]]), "weight": np.array([[9.0, 0.5, 2.0]]),
          "prob": np.array([[0.1, 0.2, 0.3]]), "rank": np.array([[3, 1, 2]])}
  records = token_dump.token_records(7, dump, lambda ids: f"<{ids[0]}>")
  assert [(r["position"], r["token"], r["rank"], r["weight"]) for r in records] == [(1, "<6>", 1, 0.5),
                                                                                     (2, "<7>", 2, 2.0)]
  assert "expected_rank" not in records[0]
  np.testing.assert_allclose(records[0]["log_prob"], np.log(0.2))


def test_dump_settings_are_validated():
  with pytest.raises(ValueError, match="dump_tokens"):
    losses.validate_config(loss_config(dump_tokens=-1))
  with pytest.raises(ValueError, match="dump_sequences"):
    losses.validate_config(loss_config(dump_sequences=0))
