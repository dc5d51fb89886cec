"""curves.png and metrics.png (matplotlib without pyplot: no global state), over the runs each group's
statistics are over (`Report.counted`)."""

from __future__ import annotations

import math

from rankjax.report.contents import Report

CURVE_METRICS = ("loss", "mean_nll")
UNITS = {"loss": "the weighted loss each method minimises", "mean_nll": "nats per supervised token",
         "mean_weight": "mean token weight"}


def _figure(width: float, height: float, ncols: int):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
  from matplotlib.figure import Figure  # noqa: PLC0415
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _title(metric: str) -> str:
  return f"{metric} ({UNITS[metric]})" if metric in UNITS else metric


def plot_curves(report: Report, path: str, metrics=CURVE_METRICS) -> None:
  """Writes to `path` (a PNG) each metric against the optimizer step, one line per group (the mean over its
  counted runs at each logged step) with a band from the min to the max over them."""
  import numpy as np  # noqa: PLC0415
  metrics = [m for m in metrics if any(r.series(m)[0] for r in report.runs)] or list(metrics[:1])
  fig, axes = _figure(5.5 * len(metrics), 4, len(metrics))
  for ax, m in zip(axes, metrics):
    for g in report.groups:
      runs = report.counted(g)
      by_step: dict = {}
      for r in runs:
        for s, v in zip(*r.series(m)):
          if math.isfinite(v):
            by_step.setdefault(s, []).append(v)
      if not by_step:
        continue
      steps = sorted(by_step)
      vals = [np.asarray(by_step[s]) for s in steps]
      line, = ax.plot(steps, [v.mean() for v in vals], label=f"{g.label} (n={len(runs)})")
      if len(runs) > 1:
        ax.fill_between(steps, [v.min() for v in vals], [v.max() for v in vals], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("optimizer step")
    ax.set_title(_title(m), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  which = "runs" if report.include_unfinished else "finished runs"
  fig.suptitle(f"mean over each group's {which}; band: min to max", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def plot_metrics(report: Report, path: str) -> None:
  """Writes to `path` (a PNG) one panel per metric; a bar per group (mean), its 95% t-interval as error bar
  (none for n = 1) and each counted run's value as a dot."""
  import numpy as np  # noqa: PLC0415
  metrics = report.metrics or ["loss"]
  fig, axes = _figure(max(4.0, 0.6 * len(report.groups) + 2.5) * len(metrics), 4.5, len(metrics))
  x = np.arange(len(report.groups))
  for ax, m in zip(axes, metrics):
    means = [st[m]["mean"] if m in st else float("nan") for st in report.stats]
    errs = [st[m]["ci95"] if m in st and math.isfinite(st[m]["ci95"]) else 0.0 for st in report.stats]
    ax.bar(x, np.nan_to_num(means), yerr=errs, capsize=4, color="tab:blue", alpha=0.7)
    for i, st in enumerate(report.stats):
      dots = [v for v in (st.get(m, {}).get("values") or []) if v is not None and math.isfinite(v)]
      ax.plot([i] * len(dots), dots, "k.", markersize=4)
    ax.set_xticks(x, [g.label for g in report.groups], rotation=35, ha="right", fontsize=7)
    ax.set_title(_title(m), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
  which = "runs" if report.include_unfinished else "finished runs"
  fig.suptitle(f"final metrics: mean ± 95% t-interval over seeds ({which}); dots: runs", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
