"""One process of the 2-process CPU multi-host test (tests/test_multihost.py).

    python tests/multihost_worker.py --process_id=i --num_processes=2 --port=P --out=DIR

Each process has 2 CPU devices (4 global), joins `jax.distributed` over localhost (gloo
collectives), feeds its host-local Grain batch into a global (data=2, fsdp=2) mesh and runs one
train step per loss from the same initial state. It writes DIR/process_{i}.json (its local
batch's source indices, and per loss the loss, grad_norm and parameter sums) and, from process
0, DIR/global.npz (the gathered global batch and updated parameters). Then both sample a small evaluation on
the mesh; process 0 grades it and writes DIR/eval/. The test imports the
helpers here to build the single-process reference.
"""

import os
import sys

if __name__ == "__main__":  # before jax is imported; not when the test imports the helpers
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from rankjax import models  # noqa: E402
from rankjax.data import formatting, pipeline  # noqa: E402
from rankjax.data.bpe import train_bpe  # noqa: E402
from rankjax.eval import benchmarks, harness, settings  # noqa: E402
from rankjax.train.loop import create_state  # noqa: E402
from rankjax.train.optimizer import learning_rate_schedule  # noqa: E402
from rankjax.train.train_step import make_train_step  # noqa: E402
from tests.helpers import tiny_run_config  # noqa: E402

GLOBAL_ROWS = 8
SEQ_LEN = 64
NUM_RECORDS = 64
LOSSES = ("ranktuner", "talr")
TEMPLATE = "Question: {prompt}\nAnswer: "


def make_records() -> list[dict]:
  """NUM_RECORDS deterministic arithmetic records with distinct responses."""
  rng = np.random.default_rng(0)
  pairs = rng.choice(90 * 90, NUM_RECORDS, replace=False)
  out = []
  for i, p in enumerate(pairs):
    a, b = 10 + int(p) // 90, 10 + int(p) % 90
    out.append({"prompt": f"What is {a} plus {b}?", "response": f"{a}+{b}={a + b}", "messages": "",
                "answer": str(a + b), "source_file": "mem", "source_index": i, "error": ""})
  return out


def make_formatter(records) -> formatting.Formatter:
  """A BPE tokenizer trained on the templated texts (short enough for 2 examples per row)."""
  texts = (TEMPLATE.format(prompt=r["prompt"]) + r["response"] for r in records)
  return formatting.Formatter(train_bpe(texts, 300), "plain", TEMPLATE)


def local_batch(records, formatter, process_index: int, process_count: int) -> dict:
  """The first host-local batch [1, GLOBAL_ROWS / process_count, SEQ_LEN] of host `process_index`."""
  options = pipeline.PipelineOptions(seq_len=SEQ_LEN, rows_per_host=GLOBAL_ROWS // process_count, prefetch=0,
                                     process_index=process_index, process_count=process_count)
  pipe = pipeline.SFTPipeline(records, formatter, options)
  try:
    return pipe.next_batch(1)
  finally:
    pipe.close()


def source_indices(batch, records, formatter) -> list[int]:
  """The source_index of every packed example in `batch`, found by its decoded response."""
  by_response = {r["response"]: r["source_index"] for r in records}
  tok, out = formatter.tokenizer, []
  for a in range(batch["inputs"].shape[0]):
    for row in range(batch["inputs"].shape[1]):
      seg, targets, mask = (batch[k][a, row] for k in ("segment_ids", "targets", "loss_mask"))
      for s in np.unique(seg[seg > 0]):
        text = tok.decode(targets[(seg == s) & (mask > 0)].tolist())
        out.append(by_response[text.removesuffix("<eos>")])
  return out


def run_config(loss: str):
  """Tiny model; no warmup, so the first step's learning rate is the peak (not 0)."""
  return tiny_run_config(**{"loss.name": loss, "data.seq_len": SEQ_LEN, "data.batch_size": GLOBAL_ROWS,
                            "optimizer.warmup_fraction": 0.0, "optimizer.learning_rate": 1e-3,
                            "total_steps": 10})


def train_steps(mesh, global_batch: dict) -> dict:
  """{loss: (metrics, params)} after one jitted train step per loss on `mesh`, each from the same initial state."""
  config = run_config(LOSSES[0])
  model = models.build_model(config.model)
  state = create_state(config, model, mesh)  # the same for every loss (only config.loss differs)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  schedule = learning_rate_schedule(config.optimizer, config.total_steps)
  out = {}
  for loss in LOSSES:
    step = jax.jit(make_train_step(model, run_config(loss).loss, schedule),
                   out_shardings=(shardings, NamedSharding(mesh, P())))
    new_state, metrics = step(state, global_batch)
    out[loss] = metrics, new_state.params
  return out


def eval_config():
  """A small sampled evaluation: 2 samples of 6 problems at temperature 1, batches of 8 rows."""
  c = settings.default_config()
  c.update({"benchmarks": "synthetic", "num_samples": 2, "pass_k": (1, 2), "max_new_tokens": 8, "batch_size": 8,
            "progress": False})
  c.grading.workers = 1
  return c


def sampled_eval(mesh, records, formatter, out_dir: str) -> dict:
  """`harness.run_eval` of the initial params on `mesh` over the first 6 records; writes out_dir (process 0)."""
  config = run_config(LOSSES[0])
  model = models.build_model(config.model)
  params = create_state(config, model, mesh).params
  problems = {"mem": [benchmarks.Problem("mem", i, r, r["answer"]) for i, r in enumerate(records[:6])]}
  return harness.run_eval(model, params, formatter, problems, eval_config(), mesh, out_dir=out_dir)


def flat_params(params) -> dict:
  """{"['layer_0']['attn']['q']": numpy array, ...} of a fully addressable (or gathered) params tree."""
  return {jax.tree_util.keystr(k): np.asarray(x) for k, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def step_report(metrics, params: dict) -> dict:
  """The JSON-able result of one step: loss, grad_norm, nonfinite and float64 parameter sums."""
  sums = {k: float(np.sum(v, dtype=np.float64)) for k, v in params.items()}
  return {"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
          "nonfinite": float(metrics["nonfinite"]), "param_sums": sums, "param_total": float(sum(sums.values()))}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()

  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the default in jax 0.10, said explicitly
  address = f"127.0.0.1:{args.port}"
  jax.distributed.initialize(coordinator_address=address, coordinator_bind_address=address,  # not on all interfaces
                             num_processes=args.num_processes, process_id=args.process_id, initialization_timeout=60)
  assert jax.process_index() == args.process_id and jax.process_count() == args.num_processes
  records = make_records()
  formatter = make_formatter(records)
  local = local_batch(records, formatter, jax.process_index(), jax.process_count())
  mesh = models.make_mesh(data=2, fsdp=2, tensor=1, devices=jax.devices())
  sharding = models.sharding.batch_sharding(mesh)
  batch = {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
  report = {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
            "mesh_devices": [[d.id, d.process_index] for d in mesh.devices.flat],
            "source_indices": source_indices(local, records, formatter),
            "local_shape": list(local["inputs"].shape), "global_shape": list(batch["inputs"].shape)}
  arrays = {f"batch/{k}": v for k, v in multihost_utils.process_allgather(batch, tiled=True).items()}
  for loss, (metrics, params) in train_steps(mesh, batch).items():
    params = flat_params(multihost_utils.process_allgather(params, tiled=True))
    report[loss] = step_report(metrics, params)
    arrays.update({f"{loss}/{k}": v for k, v in params.items()})
  report["eval_dir"] = os.path.join(args.out, "eval")
  report["eval"] = sampled_eval(mesh, records, formatter, report["eval_dir"])
  with open(os.path.join(args.out, f"process_{args.process_id}.json"), "w", encoding="utf-8") as f:
    json.dump(report, f)
  if args.process_id == 0:
    np.savez(os.path.join(args.out, "global.npz"), **arrays)
  multihost_utils.sync_global_devices("multihost_worker done")
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
