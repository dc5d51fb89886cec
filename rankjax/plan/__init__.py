"""Pod plans checked on a CPU: a run's real train step and sampling engine compiled for a TPU slice (libtpu, no TPU),
with per-chip memory against HBM, FLOPs, a roofline step time and the collectives (`python -m rankjax.plan`).

Modules: `topologies` (the slices: names, libtpu topologies, HBM), `train_plan` (compile the train step),
`sampling_plan` (compile prefill and decode), `memory` (per-chip bytes), `collectives` (from the optimised HLO),
`markdown` (plan.md), `command` (the command line).
"""
