"""The sampled math evaluation: draw n samples per problem, grade them, report Pass@1 / Pass@k.

`run_eval` is what `python -m rankjax.evaluate` and the training loop's periodic evaluation call: the model,
its params (on `mesh`), the prompt formatter and the eval settings in; results out, and with `out_dir` the
files samples.jsonl, results.json and results.md. Generation runs on the continuous-batching engine
(`rankjax.sampling.engine`: one request per problem, its prompt prefilled once, `batch_size` decode slots split over
the mesh); every process generates, process 0 grades (as samples finish), writes and returns the results.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import sys
import time

import jax
import numpy as np
import tqdm

from rankjax.data.formatting import Formatter, SkipExample
from rankjax.data.hf_tokenizer import MATH_COT_SYSTEM, HFTokenizer
from rankjax.eval import benchmarks as benchmarks_lib
from rankjax.eval import report, samples_file, settings as settings_lib
from rankjax.data.answers import extract_answer
from rankjax.eval.grading import GradingPool
from rankjax.sampling.config import SamplingConfig
from rankjax.sampling.engine import Request, Sample, engine_for
from rankjax.sampling.keys import sample_keys

DEFAULT_PLAIN_TEMPLATE = "Question: {prompt}\nAnswer: "


def make_formatter(tokenizer: HFTokenizer, prompt: str, plain_template: str = "", trained_format: str = "") -> Formatter:
  """The formatter that writes eval prompts.

  prompt "chat_cot": the tokenizer's chat template with the Qwen2.5-Math CoT system prompt; "plain": BOS +
  `plain_template` (default DEFAULT_PLAIN_TEMPLATE); "auto": chat_cot when the tokenizer has a chat template
  and the checkpoint was not trained with `trained_format` "plain", else plain.
  """
  if prompt == "auto":
    prompt = "chat_cot" if tokenizer.chat_template and trained_format != "plain" else "plain"
  if prompt == "chat_cot":
    return Formatter(tokenizer, "chat", system_prompt=MATH_COT_SYSTEM)
  return Formatter(tokenizer, "plain", plain_template=plain_template or DEFAULT_PLAIN_TEMPLATE)


def load_all_problems(config, data_dir: str, synthetic_config=None) -> dict[str, list[benchmarks_lib.Problem]]:
  """{benchmark name: its problems} for the eval config's benchmarks (the first num_problems of each)."""
  return {spec.name: benchmarks_lib.load_problems(spec, config.data, data_dir, int(config.num_problems),
                                                  synthetic_config)
          for spec in settings_lib.parse_benchmarks(config.benchmarks)}


@dataclasses.dataclass
class _Pending:
  problem: benchmarks_lib.Problem
  sample: int
  prompt: list[int]


def _broadcast_done(done: np.ndarray) -> np.ndarray:
  """Process 0's view of which samples exist, on every process (only process 0 reads the files)."""
  if jax.process_count() == 1:
    return done
  from jax.experimental import multihost_utils  # noqa: PLC0415
  return np.asarray(multihost_utils.broadcast_one_to_all(done))


def _requests(pending: list, sampling: SamplingConfig, seed: int) -> tuple[list[Request], list[list]]:
  """One engine request per problem (its prompt is prefilled once) holding its pending samples, each with its own
  key (`sample_keys`); and, per request, the pending items of its samples in order."""
  groups: dict[tuple, list] = {}
  for it in pending:
    groups.setdefault((it.problem.benchmark, it.problem.index), []).append(it)
  requests, owners = [], []
  for items in groups.values():
    keys = sample_keys(seed, [(it.problem.benchmark, it.problem.index, it.sample) for it in items])
    requests.append(Request(list(items[0].prompt), sampling, keys=keys))
    owners.append(items)
  return requests, owners


def sampling_settings(config, formatter: Formatter) -> dict:
  """What determines the samples (checked against an existing samples.jsonl before resuming)."""
  return {"temperature": float(config.temperature), "top_p": float(config.top_p), "top_k": int(config.top_k),
          "max_new_tokens": int(config.max_new_tokens), "seed": int(config.seed),
          "prompt": "chat_cot" if formatter.prompt_format == "chat" else "plain",
          "plain_template": formatter.plain_template if formatter.prompt_format == "plain" else "",
          "system_prompt": formatter.system_prompt}


def run_eval(model, params, formatter: Formatter, problems: dict[str, list[benchmarks_lib.Problem]], config,
             mesh=None, out_dir: str | None = None, extra_settings: dict | None = None,
             grading_pool: GradingPool | None = None) -> dict:
  """Samples config.num_samples completions of every problem, grades them and returns the results dict of
  `report.summarize` (plus "settings" and "timing") on process 0, {} elsewhere.

  With `out_dir`, samples already in out_dir/samples.jsonl are reused (same settings required) and new ones
  appended as they are graded; results.json and results.md are written at the end. `extra_settings` (e.g.
  the checkpoint) join the settings that must match. `grading_pool` may be shared across calls.
  """
  settings_lib.validate(config)
  lead = jax.process_index() == 0
  tokenizer = formatter.tokenizer
  n = int(config.num_samples)
  ks = settings_lib.pass_ks(config)
  settings = {**sampling_settings(config, formatter), **(extra_settings or {})}
  previous = {}
  if out_dir and lead:
    samples_file.check_settings(out_dir, settings)
    previous = samples_file.read_samples(out_dir)

  items, skipped = [], {}
  for name, plist in problems.items():
    for problem in plist:
      try:
        prompt = formatter.prompt_ids(problem.record)
      except SkipExample as e:
        skipped[f"{name}:{e.reason}"] = skipped.get(f"{name}:{e.reason}", 0) + 1
        continue
      items.extend(_Pending(problem, j, prompt) for j in range(n))
  if skipped:
    raise ValueError(f"eval: problems whose prompt cannot be written: {skipped}")
  done = np.asarray([(it.problem.benchmark, it.problem.index, it.sample) in previous for it in items], bool)
  done = _broadcast_done(done)
  pending = [it for it, d in zip(items, done) if not d]

  sampling = SamplingConfig(int(config.max_new_tokens), float(config.temperature), float(config.top_p),
                            int(config.top_k), tokenizer.stop_ids)
  requests, owners = _requests(pending, sampling, int(config.seed))
  own_pool = grading_pool is None and lead
  pool = GradingPool(int(config.grading.workers) or None, float(config.grading.timeout_s)) if own_pool else grading_pool
  writer = samples_file.SamplesWriter(out_dir) if (out_dir and lead) else None
  new_rows: list[dict] = []
  grader = concurrent.futures.ThreadPoolExecutor(1) if lead else None
  futures = []
  bar = tqdm.tqdm(total=len(pending), unit="sample", disable=not (config.progress and lead), dynamic_ncols=True,
                  desc="eval", mininterval=0.5 if sys.stderr.isatty() else 30.0)
  t0, gen_tokens = time.perf_counter(), 0

  def grade_and_write(rows):
    verdicts = pool.grade_many([(r["completion"], r["gold"]) for r in rows])
    for row, ok in zip(rows, verdicts):
      row["correct"] = bool(ok)
    if writer is not None:
      writer.write(rows)
    return rows

  finished: list[tuple[_Pending, Sample]] = []

  def on_sample(i, j, sample):
    nonlocal gen_tokens
    gen_tokens += len(sample.tokens)
    finished.append((owners[i][j], sample))
    if len(finished) >= int(config.batch_size):
      submit()

  def submit():
    if lead and finished:
      rows = []
      for it, c in finished:
        text = tokenizer.decode(c.tokens)
        rows.append({"benchmark": it.problem.benchmark, "problem": it.problem.index, "sample": it.sample,
                     "completion": text, "answer": extract_answer(text), "gold": it.problem.gold,
                     "correct": False, "generated_tokens": len(c.tokens), "finish": c.finish})
      futures.append(grader.submit(grade_and_write, rows))
      bar.update(len(rows))
      bar.set_postfix(tok_s=f"{gen_tokens / max(time.perf_counter() - t0, 1e-9):.0f}", refresh=False)
    finished.clear()

  try:
    if requests:
      engine = engine_for(model, params, requests, int(config.batch_size), mesh, pad_id=tokenizer.pad_id or 0)
      engine.run(requests, on_sample)
      submit()
    for f in futures:
      new_rows.extend(f.result())
  finally:
    bar.close()
    if grader is not None:
      grader.shutdown(wait=True)
    if writer is not None:
      writer.close()
    if own_pool:
      pool.close()
  if not lead:
    return {}
  elapsed = time.perf_counter() - t0
  wanted = {(it.problem.benchmark, it.problem.index, it.sample) for it in items}
  all_rows = {key: row for key, row in previous.items() if key in wanted}
  all_rows.update({(r["benchmark"], r["problem"], r["sample"]): r for r in new_rows})
  results = report.summarize(all_rows, list(problems), n, ks)
  results["settings"] = {**settings, "num_samples": n, "benchmarks": list(problems),
                         "num_problems": int(config.num_problems), "pass_k": list(ks)}
  results["timing"] = {"new_samples": len(pending), "generated_tokens": gen_tokens, "seconds": elapsed,
                       "samples_per_second": len(pending) / max(elapsed, 1e-9),
                       "tokens_per_second": gen_tokens / max(elapsed, 1e-9)}
  if out_dir:
    report.write_results(out_dir, {k: results[k] for k in ("benchmarks", "average")}, ks, results["settings"],
                         results["timing"])
  return results


def flat_metrics(results: dict, prefix: str = "eval") -> dict:
  """{"eval/<benchmark>/pass@k": value, ..., "eval/average/pass@k": value} of a results dict."""
  out = {}
  for name, r in results.get("benchmarks", {}).items():
    for key, value in r.items():
      if key.startswith("pass@") or key in ("mean_generated_tokens", "truncated"):
        out[f"{prefix}/{name}/{key}"] = value
  for key, value in results.get("average", {}).items():
    if key.startswith("pass@"):
      out[f"{prefix}/average/{key}"] = value
  return out


def default_data_dir(workdir: str) -> str:
  """Where benchmarks are prepared when the eval config's data.tfds_data_dir is empty."""
  return os.path.join(workdir, "tfds")
