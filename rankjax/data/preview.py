"""Print packed training rows with the supervised span marked, to check the loss mask by eye.

python -m rankjax.preview --config=configs/gsm8k_tiny.py [--n=3] [--workdir=DIR] [--config.data.seq_len=1024]

Supervised target tokens (what the loss trains on) are shown between ⟦ and ⟧ (green on a
terminal); everything else is context. Each packed example starts on a new line with its
segment id; padding is summarised.
"""

from __future__ import annotations


from rankjax import models
from rankjax.data import stream

def render_example(tokenizer, inputs, targets, mask, color: bool) -> str:
  """The example's first input token then every target, supervised ones marked."""
  start, end = ("\x1b[42m\x1b[30m", "\x1b[0m") if color else ("⟦", "⟧")
  pieces, span = [tokenizer.decode([int(inputs[0])])], []
  for tok, sup in zip(targets, mask):
    if sup > 0:
      span.append(int(tok))
      continue
    if span:
      pieces.append(start + tokenizer.decode(span) + end)
      span = []
    pieces.append(tokenizer.decode([int(tok)]))
  if span:
    pieces.append(start + tokenizer.decode(span) + end)
  return "".join(pieces)


def preview(config, n: int, workdir: str, color: bool = False) -> str:
  """The text shown for the first `n` packed examples of the run's data."""
  init = models.resolve_init_from(config.init_from)
  vocab_size = models.read_model_config(init.path).vocab_size if init.pretrained else config.model.vocab_size
  tokenizer, pipe = stream.make_pipeline(config, workdir, vocab_size, init.pretrained)
  lines, shown = [], 0
  try:
    while shown < n:
      batch = pipe.next_batch()
      for r in range(batch["inputs"].shape[1]):
        seg = batch["segment_ids"][0, r]
        lines.append(f"=== row {r}: {int((seg > 0).sum())}/{len(seg)} tokens used, "
                     f"{int(batch['loss_mask'][0, r].sum())} supervised")
        for s in sorted(set(seg[seg > 0].tolist())):
          if shown == n:
            break
          sel = seg == s
          lines.append(f"--- segment {s}:")
          lines.append(render_example(tokenizer, batch["inputs"][0, r][sel], batch["targets"][0, r][sel],
                                      batch["loss_mask"][0, r][sel], color))
          shown += 1
        if shown == n:
          break
    lines.append("=== records read so far, each once (used, skipped by reason, truncated): "
                 f"{pipe.record_counts(read_ahead=True)}; {pipe.epochs_read(read_ahead=True):.2f} epochs read")
  finally:
    pipe.close()
  return "\n".join(lines)
