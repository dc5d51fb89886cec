"""plan.md: a plan (the dict `rankjax.plan.command` writes to plan.json) for people."""

from __future__ import annotations

from rankjax.plan.memory import gib


def _g(n) -> str:
  return f"{gib(n):.2f}"


def render(plan: dict) -> str:
  """The Markdown text of `plan`."""
  t = plan["train"]
  lines = [f"# Plan: {plan['config']} on {t['topology']} ({t['chips']} chips, {t['device_kind']})", "",
           f"Command: `{plan['command']}`", "",
           f"JAX {t['versions']['jax']}, libtpu {t['versions']['libtpu']}. A plan holds for the same JAX, libtpu, "
           "XLA flags and config as the run; it is compiled, not measured on the chip.", ""]
  verdict = "fits" if t["fits"] else "DOES NOT FIT"
  m = t["memory_per_chip_bytes"]
  b = t["batch"]
  trained = (f"{t['parameters'] / 1e9:.3f} B parameters" if not t.get("lora") else
             f"LoRA r={t['lora']['rank']}: {t['parameters'] / 1e6:.1f} M adapter parameters trained on a frozen base of "
             f"{t['lora']['frozen_parameters'] / 1e9:.3f} B")
  lines += [f"## Train step: {verdict}", "",
            f"Model: {trained} ({t['model']['param_dtype']} params, "
            f"{t['model']['dtype']} compute, remat {t['model']['remat']}); loss {t['loss']['name']}"
            f"{' (' + t['loss']['form'] + ')' if t['loss']['form'] and t['loss']['name'] == 'ranktuner' else ''}; "
            f"mesh {t['mesh']}; batch {b['global_sequences']} x {b['seq_len']} in {b['grad_accum_steps']} micro-steps "
            f"of {b['micro_batch']} (sharding {t['batch_sharding']}).", ""]
  if t.get("batch_replicated"):
    ways = t["mesh"].get("data", 1) * t["mesh"].get("fsdp", 1)
    lines += [f"**Warning: the micro-batch of {b['micro_batch']} does not divide among the {ways} batch ways, so every "
              f"chip computes all of it** ({ways}x the work of a split batch; the roofline below does not count "
              "it). Use a micro-batch that is a multiple of data * fsdp.", ""]
  lines += ["| per chip | GiB |", "|---|---:|"]
  for key, label in (("parameters", "parameters (trained)"), ("frozen_base", "frozen base (LoRA)"),
                     ("anchor", "anchor model (asft's initial weights, psft's old policy)"),
                     ("optimizer_state", "optimizer state"), ("batch", "batch"),
                     ("outputs_new", "outputs (not aliased)"), ("temporaries", "temporaries"), ("code", "code"),
                     ("peak", "**peak**"), ("hbm", "HBM"), ("margin", "margin")):
    if key in ("frozen_base", "anchor") and not m.get(key):
      continue
    lines.append(f"| {label} | {_g(m[key])} |")
  r = t["roofline"]
  lines += ["", f"Model FLOPs per step (analytic, `models/flops.py`): {t['model_flops_per_step']:.3e}. "
            f"XLA's count per chip: {t['xla']['flops_per_chip']:.3e} ({t['xla']['note']}).", "",
            f"Roofline at {r['mfu']:.0%} MFU of {r['peak_flops_per_chip'] / 1e12:.0f} TFLOP/s per chip: "
            f"{r['step_seconds']:.3g} s per step, {r['tokens_per_second']:,.0f} tokens/s "
            f"(at 100%: {r['step_seconds_at_peak']:.3g} s).", "",
            "| collective per step | count | GiB per chip |", "|---|---:|---:|"]
  c = t["collectives_per_step"]
  for kind, v in c.items():
    if kind not in ("partial", "largest"):
      lines.append(f"| {kind} | {v['count']} | {_g(v['bytes'])} |")
  if c["partial"]:
    lines.append("\nSome loop's trip count is unknown: those collectives are counted once.")
  if c.get("largest"):
    lines += ["", "Largest collectives of each kind per step (the JAX operation is the HLO's op_name):", "",
              "| kind | result shape | count | GiB per chip | JAX operation |", "|---|---|---:|---:|---|"]
    for g in c["largest"]:
      shape = g["shape"] if len(g["shape"]) <= 160 else g["shape"][:150] + " ... (in plan.json)"  # a tuple of many
      lines.append(f"| {g['kind']} | `{shape}` | {g['count']} | {_g(g['bytes'])} | `{g['op_name'][-120:]}` |")
  lines += ["", f"Compile: {t['compile_seconds']:.1f} s (lowering {t['lower_seconds']:.1f} s)."]
  s = plan.get("sampling")
  if s:
    sm = s["memory_per_chip_bytes"]
    lines += ["", f"## Sampling engine: {'fits' if s['fits'] else 'DOES NOT FIT'}", "",
              f"{s['slots']} slots x {s['max_len']} positions (prompt width {s['prompt_width']} + "
              f"{s['max_new_tokens']} new tokens); prefill of {s['prefill_rows']} prompts at once.", "",
              "| per chip | GiB |", "|---|---:|"]
    for key in ("parameters", "kv_cache", "decode_state", "prefill_temporaries", "prefill_peak",
                "decode_temporaries", "decode_peak", "peak", "hbm", "margin"):
      lines.append(f"| {key.replace('_', ' ')} | {_g(sm[key])} |")
    lines += ["", f"Compile: prefill {s['compile_seconds']['prefill']:.1f} s, decode "
              f"{s['compile_seconds']['decode']:.1f} s."]
  return "\n".join(lines) + "\n"
