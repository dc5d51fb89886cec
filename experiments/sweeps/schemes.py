"""Every weighting scheme of the spec once, same data and seed."""


def get_sweep():
  return [
      ("sft", {"loss.name": "sft"}),
      ("dft", {"loss.name": "dft"}),
      ("talr", {"loss.name": "talr"}),
      ("eaft", {"loss.name": "eaft"}),
      ("ranktuner_exact_prob", {"loss.name": "ranktuner", "loss.form": "exact", "loss.base": "prob"}),
      ("ranktuner_bound_prob", {"loss.name": "ranktuner", "loss.form": "bound", "loss.base": "prob"}),
      ("ranktuner_exact_uniform", {"loss.name": "ranktuner", "loss.form": "exact", "loss.base": "uniform"}),
  ]
