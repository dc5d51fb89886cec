"""The sampled math evaluation: per-sample keys, resume, result files, benchmarks, the CLI on rankjax and HF
checkpoints, and the evaluation during training."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from rankjax import models
from rankjax.data import bpe
from rankjax.data.formatting import Formatter
from rankjax.eval import benchmarks, report, samples_file, settings
from rankjax.sampling.config import SamplingConfig
from rankjax.sampling.keys import sample_keys
from rankjax.sampling.static_sampler import Sampler
from rankjax.train.config import load_config_file, with_overrides
from rankjax.train.metrics_writer import read_metrics
from tests.helpers import tiny_run_config
from tests.shared_runs import TINY_RUN_OVERRIDES, tiny_trained_run


def _eval_config(**overrides):
  config = load_config_file("configs/eval_math.py")
  base = {"benchmarks": "synthetic", "num_problems": 6, "num_samples": 3, "pass_k": (1, 2, 3),
          "max_new_tokens": 24, "batch_size": 8, "progress": False, "grading.workers": 1}
  return with_overrides(config, {**base, **overrides})


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """A rankjax workdir: the tiny model trained 4 steps on the synthetic corpus, evaluated every 2 (shared_runs)."""
  return tiny_trained_run(tmp_path_factory)


def _samples(directory):
  with open(os.path.join(directory, samples_file.SAMPLES_FILE), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return sorted(rows, key=lambda r: (r["benchmark"], r["problem"], r["sample"]))


def test_sample_keys_are_per_item_and_deterministic():
  items = [("a", 0, 0), ("a", 0, 1), ("a", 1, 0), ("b", 0, 0)]
  keys = sample_keys(0, items)
  assert keys.shape == (4, 2) and keys.dtype == np.uint32
  assert len({tuple(k) for k in keys}) == 4
  np.testing.assert_array_equal(sample_keys(0, items[2:3]), keys[2:3])  # independent of its neighbours
  assert not np.array_equal(sample_keys(1, items), keys)


def test_a_sample_does_not_depend_on_its_batch():
  config = tiny_run_config()
  model = models.build_model(config.model)
  params = models.init_params(model, jax.random.PRNGKey(0), 32)
  sampling = SamplingConfig(12, temperature=1.0)
  prompts = [[1, 5, 9, 13], [1, 7], [1, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 3]]
  keys = sample_keys(3, [("s", i, 0) for i in range(3)])
  together = Sampler(model, params, sampling, rows=4).generate(prompts, keys)
  alone = [Sampler(model, params, sampling, rows=1).generate([p], k[None]) for p, k in zip(prompts, keys)]
  assert [c.tokens for c in together] == [a[0].tokens for a in alone]
  mesh = models.make_mesh(-1, 1, 1)  # 8 fake CPU devices: rows split over "data"
  sharded = Sampler(model, params, sampling, rows=8, mesh=mesh).generate(prompts, keys)
  assert [c.tokens for c in sharded] == [c.tokens for c in together]
  assert {c.finish for c in together} == {"length"}  # no stop ids: every row runs to max_new_tokens


def test_formatter_writes_a_prompt_for_a_record_without_response(tmp_path):
  tokenizer = bpe.train_bpe(["What is 2 + 3? It is 5."] * 20, 300, str(tmp_path))
  record = {"prompt": "What is 2 + 3?", "response": "", "messages": "", "error": ""}
  plain = Formatter(tokenizer, "plain", plain_template="Q: {prompt}\nA:")
  assert plain.prompt_ids(record) == [tokenizer.bos_id] + tokenizer.encode("Q: What is 2 + 3?\nA:")
  full = {**record, "response": "5"}
  assert plain.prompt_ids(record) == plain(full)[0]


def test_report_pass_at_k_and_table():
  rows = {}
  for problem, correct in enumerate([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]]):
    for j, c in enumerate(correct):
      rows[("x", problem, j)] = {"benchmark": "x", "problem": problem, "sample": j, "correct": bool(c),
                                 "generated_tokens": 10, "finish": "stop" if j else "length"}
  results = report.summarize(rows, ["x"], 4, (1, 2, 4))
  r = results["benchmarks"]["x"]
  assert r["num_problems"] == 3 and r["pass@1"] == pytest.approx((1 + 0.25 + 0) / 3)
  assert r["pass@2"] == pytest.approx((1 + 0.5 + 0) / 3) and r["pass@4"] == pytest.approx(2 / 3)
  assert r["truncated"] == pytest.approx(0.25)
  assert results["average"]["pass@1"] == pytest.approx(r["pass@1"])
  table = report.markdown_table(results, (1, 2, 4))
  assert "| x | 3 | 4 | 41.67 ±" in table and "**average**" in table


def test_samples_file_repairs_a_torn_line_and_refuses_other_settings(tmp_path):
  d = str(tmp_path)
  samples_file.check_settings(d, {"temperature": 1.0, "seed": 0})
  samples_file.check_settings(d, {"temperature": 1.0, "seed": 0})  # same settings: fine
  with pytest.raises(ValueError, match=r"seed: 0 -> 1"):
    samples_file.check_settings(d, {"temperature": 1.0, "seed": 1})
  row = {k: 0 for k in samples_file.SAMPLE_FIELDS} | {"benchmark": "b"}
  writer = samples_file.SamplesWriter(d)
  writer.write([row, {**row, "sample": 1}])
  writer.close()
  with open(os.path.join(d, samples_file.SAMPLES_FILE), "a") as f:
    f.write('{"benchmark": "b", "prob')  # killed mid-write
  assert set(samples_file.read_samples(d)) == {("b", 0, 0), ("b", 0, 1)}
  writer = samples_file.SamplesWriter(d)
  writer.write([{**row, "sample": 2}])
  writer.close()
  assert set(samples_file.read_samples(d)) == {("b", 0, 0), ("b", 0, 1), ("b", 0, 2)}


def test_benchmark_specs_are_checked():
  assert [s.name for s in settings.parse_benchmarks("aime24, mine=/x.jsonl")] == ["aime24", "mine"]
  with pytest.raises(ValueError, match="unknown benchmark 'aime25'"):
    settings.parse_benchmarks("aime25")
  with pytest.raises(ValueError, match="twice"):
    settings.parse_benchmarks("aime24,aime24")
  with pytest.raises(ValueError, match="num_samples"):
    settings.validate(_eval_config(num_samples=0))


def test_shared_benchmarks_load_with_gold_answers(shared_data, tmp_path):
  config = _eval_config()
  counts = {}
  for name in ("gsm8k", "aime24", "amc23", "minerva_math", "olympiadbench"):
    problems = benchmarks.load_problems(settings.BenchmarkSpec(name), config.data, str(tmp_path))
    counts[name] = len(problems)
    assert all(p.gold and p.record["prompt"] for p in problems)
  assert counts == {"gsm8k": 1319, "aime24": 30, "amc23": 40, "minerva_math": 272, "olympiadbench": 675}
  with pytest.raises(FileNotFoundError, match="math500"):
    benchmarks.load_problems(settings.BenchmarkSpec("math500"), config.data, str(tmp_path))


def test_user_jsonl_benchmark(tmp_path):
  path = tmp_path / "mine.jsonl"
  rows = [{"question": "What is 1+1?", "final": "2"}, {"question": "What is 2+2?", "final": 4},
          {"question": "No answer here", "final": ""}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = _eval_config(**{"data.problem_field": "question", "data.answer_field": "final"})
  problems = benchmarks.load_problems(settings.BenchmarkSpec("mine", str(path)), config.data, str(tmp_path / "d"))
  assert [(p.index, p.record["prompt"], p.gold) for p in problems] == [(0, "What is 1+1?", "2"), (1, "What is 2+2?", "4")]


def test_eval_of_a_rankjax_workdir_resumes_and_is_deterministic(trained_workdir, tmp_path):
  from rankjax import evaluate
  config = _eval_config(checkpoint=trained_workdir)
  out = str(tmp_path / "a")
  results = evaluate.evaluate(config, out)
  assert set(os.listdir(out)) >= {"samples.jsonl", "results.json", "results.md", "eval_settings.json"}
  full = _samples(out)
  assert len(full) == 6 * 3 and {r["finish"] for r in full} <= {"stop", "length"}
  assert all(set(r) == set(samples_file.SAMPLE_FIELDS) for r in full)
  on_disk = json.load(open(os.path.join(out, "results.json")))
  assert on_disk["benchmarks"]["synthetic"]["num_problems"] == 6
  assert set(on_disk["benchmarks"]["synthetic"]) >= {"pass@1", "pass@2", "pass@3", "num_samples"}
  assert on_disk["average"]["pass@1"] == pytest.approx(results["average"]["pass@1"])
  assert "| synthetic | 6 | 3 |" in open(os.path.join(out, "results.md")).read()

  # Same seed in a new directory, with another batch size: the same samples.
  again = str(tmp_path / "b")
  evaluate.evaluate(_eval_config(checkpoint=trained_workdir, batch_size=4), again)
  assert _samples(again) == full

  # Killed after 7 samples: the relaunch draws only the 11 others and ends with the same files.
  resumed = str(tmp_path / "c")
  os.makedirs(resumed)
  shutil.copy(os.path.join(out, "eval_settings.json"), resumed)
  with open(os.path.join(out, "samples.jsonl")) as f:
    head = f.readlines()[:7]
  with open(os.path.join(resumed, "samples.jsonl"), "w") as f:
    f.writelines(head)
  results_c = evaluate.evaluate(config, resumed)
  assert results_c["timing"]["new_samples"] == 11
  assert _samples(resumed) == full
  assert json.load(open(os.path.join(resumed, "results.json")))["benchmarks"] == on_disk["benchmarks"]

  with pytest.raises(ValueError, match="temperature"):
    evaluate.evaluate(_eval_config(checkpoint=trained_workdir, temperature=0.5), out)


def test_eval_of_an_hf_checkpoint_uses_the_cot_chat_prompt(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from rankjax import evaluate
  from tests.test_hf_tokenizer import QWEN_SPECIALS, QWEN_TEMPLATE, train_tokenizer, write_json
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  tok = train_tokenizer(QWEN_SPECIALS)
  tok.save(str(ckpt / "tokenizer.json"))
  write_json(ckpt / "tokenizer_config.json", {
      "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
      "pad_token": "<|endoftext|>", "add_bos_token": False, "chat_template": QWEN_TEMPLATE})
  torch.manual_seed(0)
  hf_config = transformers.Qwen2Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
  transformers.AutoModelForCausalLM.from_config(hf_config).save_pretrained(str(ckpt))
  data = tmp_path / "set.jsonl"
  data.write_text("".join(json.dumps({"problem": f"What is {i}+{i}?", "answer": str(2 * i)}) + "\n" for i in range(3)))
  out = str(tmp_path / "eval")
  config = _eval_config(**{"checkpoint": str(ckpt), "benchmarks": f"tiny={data}", "num_samples": 2,
                           "pass_k": (1, 2), "dtype": "float32"})
  results = evaluate.evaluate(config, out)
  assert results["settings"]["prompt"] == "chat_cot"
  assert results["benchmarks"]["tiny"]["num_problems"] == 3
  assert len(_samples(out)) == 6 and os.path.exists(os.path.join(out, "results.md"))


def test_eval_during_training_is_logged(trained_workdir):
  # The shared run is itself the run under test: evaluated every 2 of its 4 steps (shared_runs.TINY_RUN_OVERRIDES).
  assert (TINY_RUN_OVERRIDES["eval.every_steps"], TINY_RUN_OVERRIDES["total_steps"]) == (2, 4)
  rows = {r["step"]: r for r in read_metrics(trained_workdir)}
  for step in (2, 4):
    assert 0 <= rows[step]["eval/synthetic/pass@1"] <= 1 and "eval/average/pass@1" in rows[step]
  for step in (1, 3):
    assert "eval/synthetic/pass@1" not in rows[step]
  assert os.path.exists(os.path.join(trained_workdir, "eval", "step_4", "results.md"))


def test_entry_points_import_together():
  """Importing rankjax.evaluate defines no absl flags, so it coexists with tools that define --config."""
  import rankjax.preview  # noqa: F401
  import rankjax.evaluate  # noqa: F401
