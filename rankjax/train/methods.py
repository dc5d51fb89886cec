"""Named fine-tuning methods: a loss scheme plus the loss-config fields that make it a variant.

A method name is a scheme of `rankjax.losses.SCHEMES` ("sft", "dft", "talr", "eaft", "prob_power", "asft", "psft",
"ranktuner": exact form, probability base) or one of the RankTuner variants below. Experiments and the demo take comma lists of them.
"""

from __future__ import annotations

from rankjax import losses

VARIANTS = {
    "ranktuner_uniform": {"loss.name": "ranktuner", "loss.form": "exact", "loss.base": "uniform"},
    "ranktuner_bound": {"loss.name": "ranktuner", "loss.form": "bound", "loss.base": "prob"},
    "ranktuner_bound_uniform": {"loss.name": "ranktuner", "loss.form": "bound", "loss.base": "uniform"},
}
METHODS = tuple(losses.SCHEMES) + tuple(VARIANTS)


def method_overrides(method: str) -> dict:
  """Returns the dotted-key config overrides of `method`; ValueError naming the known methods."""
  if method in VARIANTS:
    return dict(VARIANTS[method])
  if method in losses.SCHEMES:
    return {"loss.name": method, **({"loss.form": "exact", "loss.base": "prob"} if method == "ranktuner" else {})}
  raise ValueError(f"unknown method {method!r}; known: {METHODS}")


def parse_methods(text: str) -> list[str]:
  """Returns the methods of a comma list, each checked."""
  methods = [m.strip() for m in str(text).split(",") if m.strip()]
  if not methods:
    raise ValueError("methods: the list is empty")
  for m in methods:
    method_overrides(m)
  return methods
