"""rankjax.sweeps: product / zip_ semantics, stable run names, flag formatting, load_sweep validation, finished runs."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from rankjax import sweeps

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_product_order_is_itertools_product_last_fastest():
  runs = sweeps.product(seed=[0, 1], **{"loss.name": ["sft", "dft", "talr"]})
  assert runs == [{"seed": s, "loss.name": n} for s in (0, 1) for n in ("sft", "dft", "talr")]
  # Positional sub-sweeps (lists of override dicts) come first and may set several keys at once.
  variants = [{"loss.name": "ranktuner", "loss.form": "bound"}, {"loss.name": "sft"}]
  assert sweeps.product(variants, seed=[0, 1]) == [
      {"loss.name": "ranktuner", "loss.form": "bound", "seed": 0}, {"loss.name": "ranktuner", "loss.form": "bound", "seed": 1},
      {"loss.name": "sft", "seed": 0}, {"loss.name": "sft", "seed": 1}]
  assert sweeps.product() == [{}]
  assert sweeps.product(seed=[]) == []


def test_product_rejects_a_key_set_twice_and_a_bare_value():
  with pytest.raises(ValueError, match="seed"):
    sweeps.product([{"seed": 1}], seed=[0, 1])
  with pytest.raises(TypeError, match="seed"):
    sweeps.product(seed=3)
  with pytest.raises(TypeError, match="seed"):
    sweeps.product(seed="012")  # a string is one value, not a list of them


def test_zip_pairs_elementwise_and_rejects_different_lengths():
  runs = sweeps.zip_(**{"optimizer.learning_rate": [1e-3, 3e-4], "total_steps": [100, 300]})
  assert runs == [{"optimizer.learning_rate": 1e-3, "total_steps": 100},
                  {"optimizer.learning_rate": 3e-4, "total_steps": 300}]
  assert sweeps.zipped is sweeps.zip_
  nested = sweeps.product(sweeps.zip_(seed=[0, 1], **{"data.shuffle_seed": [5, 6]}), **{"loss.name": ["sft", "dft"]})
  assert [(r["seed"], r["data.shuffle_seed"], r["loss.name"]) for r in nested] == [
      (0, 5, "sft"), (0, 5, "dft"), (1, 6, "sft"), (1, 6, "dft")]
  with pytest.raises(ValueError, match=r"different lengths.*seed: 3.*loss.name: 2"):
    sweeps.zip_(seed=[0, 1, 2], **{"loss.name": ["sft", "dft"]})


def test_run_names_are_stable_readable_and_distinct():
  assert sweeps.run_name({"loss.name": "dft", "seed": 1}) == "loss.name-dft_seed-1"
  assert sweeps.run_name({"seed": 1, "loss.name": "dft"}) == "loss.name-dft_seed-1"  # dict order does not matter
  assert sweeps.run_name({}) == "default"
  assert sweeps.run_name({"optimizer.learning_rate": 3e-4, "export_hf": True}) == \
      "export_hf-True_optimizer.learning_rate-0.0003"
  grid = sweeps.product(seed=[0, 1, 2], **{"loss.name": ["sft", "dft", "ranktuner"],
                                           "optimizer.learning_rate": [1e-3, 1e-4]})
  names = [sweeps.run_name(o) for o in grid]
  assert len(set(names)) == len(grid) == 18


@pytest.mark.parametrize("overrides", [
    {"init_from": "/ckpt/Qwen2.5 Math/7B"}, {"data.files.manual_dir": ".."}, {"eval.pass_k": (1, 4, 16)},
    {"model.name": "a\\b:c*?\"<>|\n"}, {"x" * 300: "y" * 300}, {"model": {"dtype": "bfloat16"}}])
def test_run_names_are_single_path_components(tmp_path, overrides):
  name = sweeps.run_name(overrides)
  assert name == sweeps.run_name(dict(overrides)) and sweeps.check_name(name) == name
  assert name not in (".", "..") and not name.startswith(".") and len(name) <= sweeps.MAX_NAME
  assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._,+-")
  (tmp_path / name).mkdir()
  assert os.listdir(tmp_path) == [name]


def test_long_names_keep_a_hash_of_the_whole():
  a, b = sweeps.run_name({"k": "v" * 200 + "a"}), sweeps.run_name({"k": "v" * 200 + "b"})
  assert a != b and len(a) == len(b) == sweeps.MAX_NAME and a.startswith("k-vvv")


def test_format_value_round_trips_through_parse_flag():
  for value in (3, 0, -2, 1e-3, 3e-4, 1e-05, 2.0, True, False, "dft", "/path with space", (1, 4), (1,), ("a", "b")):
    text = sweeps.format_value(value)
    assert sweeps.parse_flag(text, value) == value, (value, text)
  assert sweeps.format_value(1e-3) == "0.001" and sweeps.format_value(True) == "True"
  assert sweeps.format_value((1, 2)) == "(1, 2)"
  assert sweeps.parse_flag("3", 1.0) == 3.0 and sweeps.parse_flag("false", True) is False
  with pytest.raises(TypeError):
    sweeps.format_value(object())


def test_split_config_args():
  assert sweeps.split_config_args(["--config.seed=1", "--config.loss.name=a=b", "--config.seed=2"]) == \
      {"seed": "2", "loss.name": "a=b"}
  for bad in (["--config.seed", "1"], ["--seed=1"], ["extra"]):
    with pytest.raises(ValueError, match="--config.a.b=value"):
      sweeps.split_config_args(bad)


def _config_file(tmp_path, sweep_body: str) -> pathlib.Path:
  path = tmp_path / "my_config.py"
  path.write_text("from rankjax import sweeps\nfrom rankjax.train.config import base_config\n\n\n"
                  "def get_config():\n  c = base_config()\n  c.total_steps = 7\n  c.lock()\n  return c\n\n\n"
                  f"def get_sweep():\n  return {sweep_body}\n")
  return path


def test_load_sweep_names_and_validates(tmp_path):
  path = _config_file(tmp_path, 'sweeps.product(seed=[0, 1], **{"loss.name": ["sft", "dft"]})')
  assert sweeps.load_sweep(str(path)) == [
      ("loss.name-sft_seed-0", {"seed": 0, "loss.name": "sft"}), ("loss.name-dft_seed-0", {"seed": 0, "loss.name": "dft"}),
      ("loss.name-sft_seed-1", {"seed": 1, "loss.name": "sft"}), ("loss.name-dft_seed-1", {"seed": 1, "loss.name": "dft"})]
  runs = sweeps.plan(str(path), config_args=["--config.total_steps=3", "--config.seed=9"])
  assert [r.total_steps for r in runs] == [3] * 4
  assert runs[0].flags == ("--config.total_steps=3", "--config.seed=0", "--config.loss.name=sft")  # the sweep wins
  assert runs[0].command("py", "c.py", "/s") == ["py", "-m", "rankjax.main", "--config=c.py",
                                                 "--workdir=/s/loss.name-sft_seed-0", *runs[0].flags]


@pytest.mark.parametrize("body,needles", [
    ('[{"seed": 0}, {"loss.nmae": "dft"}]', ["loss.nmae", "my_config.py"]),
    ('sweeps.product(**{"optimizer.learning_rat": [1e-3]})', ["optimizer.learning_rat", "my_config.py"]),
    ('[{"lss.name": "dft"}]', ["lss.name", "my_config.py"]),
    ('[{"loss.name": "focal"}]', ["focal", "my_config.py"]),
    ('[{"total_steps": "many"}]', ["total_steps", "my_config.py"]),
])
def test_load_sweep_names_the_bad_key_and_the_file(tmp_path, body, needles):
  path = _config_file(tmp_path, body)
  with pytest.raises(ValueError) as e:
    sweeps.load_sweep(str(path))
  for needle in needles:
    assert needle in str(e.value)


def test_load_sweep_rejects_duplicates_bad_names_and_no_sweep(tmp_path):
  with pytest.raises(ValueError, match="several runs named"):
    sweeps.load_sweep(str(_config_file(tmp_path, '[{"seed": 1}, {"seed": 1}]')))
  with pytest.raises(ValueError, match="path component"):
    sweeps.load_sweep(str(_config_file(tmp_path, '[("a/b", {"seed": 1})]')))
  with pytest.raises(ValueError, match="no get_sweep"):
    sweeps.load_sweep(str(ROOT / "configs" / "demo.py"))
  # A separate sweep file with (name, overrides) pairs (experiments/sweeps/schemes.py) applies to the config.
  pairs = sweeps.load_sweep("configs/synthetic_sft.py", str(ROOT / "experiments" / "sweeps" / "schemes.py"))
  assert pairs[0] == ("sft", {"loss.name": "sft"}) and len(pairs) == 7


def test_synthetic_sft_declares_3_seeds_x_3_methods():
  runs = sweeps.load_sweep("configs/synthetic_sft.py")
  assert len(runs) == 9 and len({n for n, _ in runs}) == 9
  assert {(o["seed"], o["loss.name"]) for _, o in runs} == {(s, m) for s in (0, 1, 2) for m in ("sft", "dft", "ranktuner")}


def test_is_finished(tmp_path):
  run = tmp_path / "run"
  assert not sweeps.is_finished(str(run), 4)
  run.mkdir()
  (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3))
                                     + '{"step": 4, "lo')  # a torn last line
  assert not sweeps.is_finished(str(run), 4) and sweeps.is_finished(str(run), 3)
  (run / "checkpoints" / "4").mkdir(parents=True)
  assert sweeps.is_finished(str(run), 4)


def test_importing_sweeps_does_not_import_jax():
  code = "import sys, rankjax.sweeps, rankjax.launch; assert 'jax' not in sys.modules, 'jax imported'"
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       check=False)
  assert out.returncode == 0, out.stderr
