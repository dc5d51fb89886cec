"""rankjax.report on hand-written run folders (config.json, metrics.jsonl, evaluation results): varying keys, seed
groups and their t-intervals, the files written, unreadable runs, the command's exit status."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest

from rankjax import report

T_975_2 = 4.302652729749462  # scipy.stats.t.ppf(0.975, 2)


def _config(run_dir, **overrides):
  config = {"seed": 0, "total_steps": 30, "progress": True, "init_from": "/shared/base",
            "loss": {"name": "sft", "form": "exact"}, "optimizer": {"learning_rate": 0.001},
            "data": {"shuffle_seed": -1, "tokenizer_path": str(run_dir), "response_noise": {"rate": 0.0, "seed": 0}},
            "eval": {"pass_k": [1], "seed": 0}}
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def make_run(root, name, loss=(3.0, 2.0, 1.0), steps=(10, 20, 30), nll=None, **overrides):
  """A run folder: config.json (with dotted `overrides`) and one metrics row per step."""
  run_dir = root / name
  run_dir.mkdir(parents=True)
  (run_dir / "config.json").write_text(json.dumps(_config(run_dir, **overrides)))
  nll = loss if nll is None else nll
  rows = [{"step": s, "loss": l, "mean_nll": n, "mean_weight": 1.0, "weight/q50": 0.5}
          for s, l, n in zip(steps, loss, nll)]
  (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return run_dir


def write_results(path, pass1, step=None, checkpoint=None, bench="synthetic"):
  path.mkdir(parents=True, exist_ok=True)
  settings = {"num_samples": 1, **({"step": step} if step is not None else {})}
  if checkpoint is not None:
    settings.update({"checkpoint": str(checkpoint), "checkpoint_step": step})
  data = {"benchmarks": {bench: {"num_problems": 4, "num_samples": 1, "pass@1": pass1, "pass@1_ci95": 0.1}},
          "average": {"pass@1": pass1, "num_benchmarks": 1}, "settings": settings}
  (path / "results.json").write_text(json.dumps(data))


def sweep(root, methods=("dft", "sft"), seeds=(0, 1, 2), finals=None):
  """methods x seeds runs named like the launcher's; finals[(method, seed)] = the last loss."""
  for m in methods:
    for s in seeds:
      last = (finals or {}).get((m, s), 1.0)
      make_run(root, f"loss.name-{m}_seed-{s}", loss=(3.0, 2.0, last), seed=s, **{"loss.name": m})


def test_flatten_and_varying_keys(tmp_path):
  a = make_run(tmp_path, "a", **{"loss.name": "sft", "progress": False})  # progress: bookkeeping
  make_run(tmp_path, "b", seed=1, **{"loss.name": "dft"})
  c = make_run(tmp_path, "c", seed=2, **{"loss.name": "dft", "optimizer.learning_rate": 0.001})
  config = json.loads((c / "config.json").read_text())
  del config["loss"]["form"]  # an older run whose config lacks a field: not a difference
  (c / "config.json").write_text(json.dumps(config))
  runs = report.collect_runs([tmp_path])
  assert [r.name for r in runs] == ["a", "b", "c"]
  assert runs[0].config["loss.name"] == "sft" and runs[0].config["data.response_noise.rate"] == 0.0
  # data.tokenizer_path differs (each run's own folder), init_from is shared: neither is a column
  assert runs[0].config["data.tokenizer_path"] == str(a)
  assert report.varying_keys(runs) == ["loss.name", "seed"]
  assert report.varying_keys(runs, ignore=()) == ["loss.name", "progress", "seed"]


def test_seed_groups_and_t_interval(tmp_path):
  finals = {("dft", 0): 1.0, ("dft", 1): 2.0, ("dft", 2): 4.0, ("sft", 0): 3.0, ("sft", 1): 3.0, ("sft", 2): 3.0}
  sweep(tmp_path, finals=finals)
  make_run(tmp_path, "lr", seed=0, **{"loss.name": "sft", "optimizer.learning_rate": 0.01})  # a group of one
  runs = report.collect_runs([tmp_path])
  groups = report.group_runs(runs)
  assert [g.label for g in groups] == ["loss.name=dft, optimizer.learning_rate=0.001",
                                       "loss.name=sft, optimizer.learning_rate=0.001",
                                       "loss.name=sft, optimizer.learning_rate=0.01"]
  assert [g.n for g in groups] == [3, 3, 1]
  dft = report.group_stats(groups[0], ["loss", "mean_nll"])["loss"]
  # by hand: mean 7/3, sd = sqrt(((1-7/3)^2 + (2-7/3)^2 + (4-7/3)^2) / 2) = sqrt(7/3), half = t * sd / sqrt(3)
  assert dft["mean"] == pytest.approx(7 / 3) and dft["n"] == 3
  assert dft["ci95"] == pytest.approx(T_975_2 * math.sqrt(7 / 3) / math.sqrt(3), rel=1e-9)
  assert report.group_stats(groups[1], ["loss"])["loss"]["ci95"] == 0.0
  single = report.group_stats(groups[2], ["loss"])["loss"]
  assert single["n"] == 1 and math.isnan(single["ci95"])
  assert [report.seed_label(r, ["seed"]) for r in groups[0].runs] == ["0", "1", "2"]
  text = report.markdown(report.build_report(runs))
  assert "| dft | 0.001 | 3 | 0, 1, 2 | 3/3 | - | 2.333 ± 3.8 |" in text and "(n=1)" in text
  # --group-by pools the learning rates; --no-group: one group per run
  assert [g.n for g in report.group_runs(runs, by=["loss.name"])] == [3, 4]
  assert [g.n for g in report.group_runs(runs, group=False)] == [1] * 7


def test_mean_ci():
  assert report.mean_ci([0.1, 0.2, 0.3]) == pytest.approx((0.2, T_975_2 * 0.1 / math.sqrt(3)))
  mean, half = report.mean_ci([5.0])
  assert mean == 5.0 and math.isnan(half)
  assert all(math.isnan(x) for x in report.mean_ci([]))


def test_shuffle_seed_and_noise_seed_are_replicates(tmp_path):
  """experiments/compare_schemes.py's layout: runs/<condition>/<method>/seed<k>, every seed key = k."""
  for cond, rate in (("clean", 0.0), ("noisy", 0.05)):
    for method in ("sft", "dft"):
      for k in (0, 1):
        overrides = {"seed": k, "data.shuffle_seed": k, "data.response_noise.seed": k, "eval.seed": k,
                     "data.response_noise.rate": rate, "loss.name": method, "total_steps": 2}  # finished
        run = make_run(tmp_path / "runs" / cond / method, f"seed{k}", loss=(2.0, 1.0 + k), steps=(1, 2), **overrides)
        write_results(run / "eval", 0.25 * (k + 1))
        (run / "eval" / "row.json").write_text(json.dumps({"seed": k, "pass@1": 0.25 * (k + 1),
                                                           "greedy_accuracy": 0.5}))
  runs = report.collect_runs([tmp_path / "runs"])
  assert runs[0].name == os.path.join("clean", "dft", "seed0")
  built = report.build_report(runs)
  assert built.columns == ["data.response_noise.rate", "loss.name"]
  assert built.seed_keys == ["data.response_noise.seed", "data.shuffle_seed", "eval.seed", "seed"]
  assert built.metrics == ["loss", "mean_nll", "mean_weight", "eval/average/pass@1", "eval/greedy_accuracy"]
  assert [g.n for g in built.groups] == [2, 2, 2, 2]
  assert [report.seed_label(r, built.seed_keys) for r in built.groups[0].runs] == ["0", "1"]
  stats = built.stats[0]
  assert stats["eval/average/pass@1"]["mean"] == pytest.approx(0.375)
  assert stats["eval/greedy_accuracy"]["mean"] == 0.5 and stats["loss"]["mean"] == pytest.approx(1.5)


def test_latest_eval_and_standalone_evaluation(tmp_path):
  a = make_run(tmp_path, "runs/a")
  write_results(a / "eval" / "step_10", 0.1, step=10)
  write_results(a / "eval" / "step_30", 0.3, step=30)
  b = make_run(tmp_path, "runs/b", **{"loss.name": "dft"})
  write_results(b / "eval" / "step_30", 0.2, step=30)
  write_results(tmp_path / "evals" / "b", 0.6, step=30, checkpoint=b)  # python -m rankjax.evaluate of b
  make_run(tmp_path, "runs/c", **{"loss.name": "eaft"})  # no evaluation
  runs = {r.name: r for r in report.collect_runs([tmp_path])}
  assert runs["runs/a"].value("eval/average/pass@1") == 0.3 and runs["runs/a"].eval_step == 30
  assert runs["runs/a"].value("eval/synthetic/pass@1") == 0.3
  assert runs["runs/b"].value("eval/average/pass@1") == 0.6
  assert runs["runs/b"].eval_source == str(tmp_path / "evals" / "b" / "results.json")
  assert runs["runs/c"].value("eval/average/pass@1") is None and runs["runs/c"].eval == {}
  assert "eval/average/pass@1" in report.default_metrics(list(runs.values()))


def test_write_report_files(tmp_path):
  sweep(tmp_path / "sweep")
  make_run(tmp_path / "sweep", "loss.name-eaft_seed-0", loss=(3.0, 2.5), steps=(10, 20), **{"loss.name": "eaft"})
  runs = report.collect_runs([tmp_path / "sweep"])
  out = tmp_path / "out"
  paths = report.write_report(runs, str(out), dirs=[tmp_path / "sweep"])
  for name in ("report.md", "report.csv", "report.json", "curves.png", "metrics.png"):
    assert (out / name).stat().st_size > 0, name
  for name in ("curves.png", "metrics.png"):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  text = (out / "report.md").read_text()
  assert "Runs found: 7 (6 finished, 1 unfinished: `loss.name-eaft_seed-0` (step 20/30))" in text
  assert "`loss.name`" in text and "seeds: 0, 1, 2" in text and "Student-t" in text and "**no**" in text
  with open(out / "report.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 7 and list(rows[0])[:3] == ["run", "loss.name", "seed"]
  eaft = next(r for r in rows if r["loss.name"] == "eaft")
  assert eaft["finished"] == "False" and eaft["step"] == "20" and float(eaft["loss"]) == 2.5
  assert eaft["path"] == str(tmp_path / "sweep" / "loss.name-eaft_seed-0")
  saved = json.loads((out / "report.json").read_text())
  assert saved["varying_keys"] == ["loss.name"] and saved["seed_keys"] == ["seed"]
  assert [g["n"] for g in saved["groups"]] == [3, 1, 3]
  assert saved["groups"][1]["metrics"]["loss"]["ci95"] is None  # n = 1: no interval (NaN written as null)
  assert saved["runs"][0]["final"]["weight/q50"] == 0.5  # new metric keys come through as they are
  assert paths["report"].groups[0].label == "loss.name=dft"


def test_torn_and_empty_metrics_are_skipped_with_a_warning(tmp_path, capsys):
  sweep(tmp_path, methods=("sft",), seeds=(0,))
  torn = make_run(tmp_path, "torn", **{"loss.name": "dft"})
  with open(torn / "metrics.jsonl", "a") as f:
    f.write('{"step": 40, "loss": 1.')
  empty = make_run(tmp_path, "empty", **{"loss.name": "dft"})
  (empty / "metrics.jsonl").write_text("")
  bad_config = make_run(tmp_path, "bad_config")
  (bad_config / "config.json").write_text("{")
  assert report.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
  err = capsys.readouterr().err
  assert str(torn / "metrics.jsonl") in err and str(empty / "metrics.jsonl") in err
  assert str(bad_config / "config.json") in err and "Traceback" not in err
  text = (tmp_path / "out" / "report.md").read_text()
  assert "Runs found: 1 (1 finished)" in text and "3 warning(s), below" in text
  assert str(torn / "metrics.jsonl") in text


def test_no_runs_exit_status_1(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  assert report.main([str(tmp_path / "empty"), str(tmp_path / "missing")]) == 1
  err = capsys.readouterr().err
  assert "no runs found" in err and str(tmp_path / "empty") in err and str(tmp_path / "missing") in err
  assert not (tmp_path / "empty" / "report.md").exists()


def test_command_options(tmp_path, capsys):
  sweep(tmp_path)
  assert report.main([str(tmp_path), "--metrics=loss,weight/q50", "--no-group"]) == 0
  saved = json.loads((tmp_path / "report.json").read_text())
  assert saved["metrics"] == ["loss", "weight/q50"] and len(saved["groups"]) == 6 and not saved["grouped"]
  assert "| run | n | seeds |" in (tmp_path / "report.md").read_text()
  assert report.main([str(tmp_path), "--metrics=nope"]) == 2
  assert "nope" in capsys.readouterr().err
  assert report.main([str(tmp_path), "--group-by=", "--out", str(tmp_path / "pooled")]) == 0
  saved = json.loads((tmp_path / "pooled" / "report.json").read_text())
  assert [g["n"] for g in saved["groups"]] == [6] and saved["groups"][0]["label"] == "all runs"


def test_unfinished_runs_are_left_out_of_group_statistics(tmp_path, capsys):
  """The review finding: a run stopped at step 4 with loss 9.0 pooled with two finished runs (losses 1.0 and
  2.0) turned 1.5 ± 6.4 into 4 ± 11. By default only finished runs enter the statistics, and every output says
  which run was left out and why; include_unfinished / --include_unfinished counts it."""
  make_run(tmp_path, "loss.name-sft_seed-0", loss=(3.0, 2.0, 1.0), seed=0)
  make_run(tmp_path, "loss.name-sft_seed-1", loss=(3.0, 2.5, 2.0), seed=1)
  make_run(tmp_path, "loss.name-sft_seed-2", loss=(9.5, 9.0), steps=(2, 4), seed=2)  # stopped at step 4
  runs = report.collect_runs([tmp_path])
  assert [r.finished for r in runs] == [True, True, False]
  assert runs[2].unfinished_reason == "unfinished: step 4/30"
  (group,) = report.group_runs(runs)
  assert group.n == 3 and [r.name for r, _ in group.left_out()] == ["loss.name-sft_seed-2"]

  finished = report.group_stats(group, ["loss"])["loss"]
  assert finished["n"] == 2 and finished["mean"] == pytest.approx(1.5)
  assert finished["ci95"] == pytest.approx(12.706204736 * math.sqrt(0.5) / math.sqrt(2), rel=1e-6)  # 6.35
  pooled = report.group_stats(group, ["loss"], include_unfinished=True)["loss"]
  assert pooled["n"] == 3 and pooled["mean"] == pytest.approx(4.0)
  assert pooled["ci95"] == pytest.approx(T_975_2 * math.sqrt(19.0) / math.sqrt(3), rel=1e-9)  # 10.8

  assert report.main([str(tmp_path), "--metrics=loss", "--out", str(tmp_path / "out")]) == 0
  out = capsys.readouterr().out
  assert ("[report] all runs: 1 of 3 runs left out of the statistics (loss.name-sft_seed-2: unfinished: step 4/30)"
          in out)
  text = (tmp_path / "out" / "report.md").read_text()
  assert "| 3 | 0, 1, 2 | 2/3 | 1: `loss.name-sft_seed-2` (unfinished: step 4/30) | 1.5 ± 6.4 |" in text
  assert "1 unfinished run(s) left out of 1 group(s)" in text
  saved = json.loads((tmp_path / "out" / "report.json").read_text())
  (g,) = saved["groups"]
  assert g["n"] == 3 and g["n_counted"] == 2 and saved["include_unfinished"] is False
  assert g["left_out"] == [{"run": "loss.name-sft_seed-2", "reason": "unfinished: step 4/30"}]
  assert g["metrics"]["loss"]["mean"] == pytest.approx(1.5) and [r["in_statistics"] for r in saved["runs"]] == \
      [True, True, False]
  with open(tmp_path / "out" / "report.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["in_statistics"], r["left_out"]) for r in rows] == [("True", ""), ("True", ""),
                                                                  ("False", "unfinished: step 4/30")]

  assert report.main([str(tmp_path), "--metrics=loss", "--include_unfinished", "--out", str(tmp_path / "all")]) == 0
  out = capsys.readouterr().out
  assert "left out" not in out and "unfinished runs are counted in the statistics (--include_unfinished)" in out
  text = (tmp_path / "all" / "report.md").read_text()
  assert "| 3 | 0, 1, 2 | 2/3 | - | 4 ± 11 |" in text and "unfinished ones included" in text
  saved = json.loads((tmp_path / "all" / "report.json").read_text())
  assert saved["include_unfinished"] is True and saved["groups"][0]["left_out"] == []
  assert saved["groups"][0]["metrics"]["loss"]["mean"] == pytest.approx(4.0)
  built = report.write_report(runs, str(tmp_path / "api"), metrics=["loss"], include_unfinished=True)["report"]
  assert built.stats[0]["loss"]["n"] == 3


def test_finished_follows_the_checkpoints_when_there_are_any(tmp_path):
  """A run whose metrics reached total_steps but whose last committed checkpoint is earlier (killed between the
  last step's log and its checkpoint) is unfinished: relaunched, it trains that step again."""
  run = make_run(tmp_path, "run", total_steps=30)
  (run / "checkpoints" / "20").mkdir(parents=True)
  (run / "checkpoints" / "30.orbax-checkpoint-tmp-1").mkdir()
  (read,) = report.collect_runs([tmp_path])
  assert not read.finished and read.unfinished_reason == "unfinished: step 30/30"
  (run / "checkpoints" / "30").mkdir()
  (read,) = report.collect_runs([tmp_path])
  assert read.finished and read.unfinished_reason == ""


def test_python_dash_m_rankjax_report_runs_the_command(tmp_path):
  sweep(tmp_path, methods=("sft",), seeds=(0, 1))
  out = subprocess.run([sys.executable, "-m", "rankjax.report", str(tmp_path), "--metrics=loss", "--no-group"],
                       capture_output=True, text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr
  assert "[report] 2 runs (0 unfinished, 0 warnings) in 2 groups" in out.stdout
  assert (tmp_path / "report.md").is_file()
