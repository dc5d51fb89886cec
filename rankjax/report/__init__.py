"""One report over many runs: python -m rankjax.report DIR... [--out=OUT] [--metrics=a,b] [--group-by=k1,k2]
[--include_unfinished]

Collects every run under the DIRs (recursively; a run is a folder that holds `config.json` and `metrics.jsonl`,
as `python -m rankjax.main`, the launchers, the demo and experiments/compare_schemes.py write them) and writes
into OUT (default: the first DIR):

  report.md    which runs were found, which config keys vary, the seeds; a table per group of seeds (mean and
               95% t-interval) and a table per run
  report.csv   one row per run: the varying config keys, the metrics, step, total_steps, finished,
               in_statistics, left_out, path
  report.json  all of it, with every run's whole last metrics row and evaluation results (NaN written as null)
  curves.png   training loss and mean NLL against the step, one line per group (mean over its counted runs,
               band: min to max over them)
  metrics.png  the final metrics per group, bars = mean, error bars = 95% t-interval, dots = the counted runs

What is read from a run:
  - config.json, flattened to dotted keys ({"loss": {"name": "sft"}} -> {"loss.name": "sft"});
  - the last row of metrics.jsonl (`final`): the training metrics of the last logged step, each the value on
    that step's batch (loss: the weighted loss the method minimises; mean_nll: nats per supervised token;
    mean_weight: the mean token weight, 1 for plain SFT). Any numeric key can be a report metric;
  - evaluation results, where present (fractions in [0, 1]): the latest of WORKDIR/eval/step_<N>/results.json
    (the periodic evaluation), WORKDIR/eval/results.json or WORKDIR/results.json, and any results.json under
    the DIRs whose settings name the run as their checkpoint (`python -m rankjax.evaluate
    --config.checkpoint=WORKDIR`); the latest step wins. They become `eval/<benchmark>/pass@k` and
    `eval/average/pass@k`. The numeric fields of WORKDIR/eval/row.json other than pass@k and seed (the demo's
    and compare_schemes' greedy accuracy) become `eval/<field>`;
  - finished (`rankjax.rundir.progress.is_finished`, what the training loop itself checks on relaunch): the
    run has a committed checkpoint of step config.total_steps or later; in a folder without any committed
    checkpoint (copied, cleaned up, written by a script), a metrics row of that step. A run whose config.json has
    no total_steps is unfinished. A run whose config.json or metrics.jsonl cannot be read (empty, torn, not JSON)
    is skipped with a warning naming the file.

Columns and groups. A config key is a column when its value is not the same in every run, except:
  - bookkeeping keys that do not change what is trained (`BOOKKEEPING`: progress display, checkpoint cadence,
    retention and writing mode, prefetch depth, number of grading workers, the logging of token histograms and
    per-token dumps);
  - a key missing from some runs' config.json (written by an older version, before the field existed) counts
    only where the runs that have it disagree;
  - a string that is a path inside the run's own folder (e.g. data.tokenizer_path = the run's workdir) is
    compared as `<run>/rest`, so such paths do not make runs differ. Other paths (init_from = a shared base)
    are compared as they are.
Seed keys (`SEED_KEYS`: seed, data.shuffle_seed, data.response_noise.seed, eval.seed) are replicates: runs whose
other varying keys are equal form a group, and each metric gets the mean over the group's runs, the half-width of
the 95% Student-t interval, t(0.975, n-1) * sd / sqrt(n), and n. `--group-by=k1,k2` groups by those keys only
(pooling runs that differ in others), `--no-group` makes every run its own group.

Unfinished runs. Every run is listed and belongs to its group, but only finished runs enter the group's mean,
interval and plots: an unfinished run's last logged values come from an earlier step (a run stopped at step 4 with
loss 9.0 would turn two finished runs' 1.5 ± 6.4 into 4 ± 11). Each group says how many runs it left out and why
(report.md's `left out` column, report.json's `left_out`, report.csv's `in_statistics` and `left_out`, the
command's output). `--include_unfinished` (include_unfinished=True in the Python API) counts them.

The library functions are pure (no global state, matplotlib without pyplot) and usable from notebooks:
collect_runs, varying_keys, group_runs, group_stats, mean_ci, build_report, markdown, write_report.

Modules: values (numbers, JSON files), evals (evaluation results of a run), runs (Run, read_run, collect_runs),
grouping (varying keys, seed labels, groups), stats (mean_ci, group_stats), contents (Report, build_report),
cells, markdown, csv_file, json_file, plots, write (write_report), command (the command; __main__ runs it).
"""

from rankjax.report.cells import cell, num, stat_cell, table
from rankjax.report.command import main
from rankjax.report.contents import Report, build_report
from rankjax.report.csv_file import write_csv
from rankjax.report.evals import PRUNE, attach_eval, eval_values, external_evals, is_results, own_evals
from rankjax.report.grouping import (BOOKKEEPING, SEED_KEYS, Group, comparable, group_runs, is_seed_key, seed_label,
                                     sort_value, varying_keys)
from rankjax.report.json_file import report_dict
from rankjax.report.markdown_file import markdown
from rankjax.report.plots import CURVE_METRICS, UNITS, plot_curves, plot_metrics
from rankjax.report.runs import Run, collect_runs, find_run_dirs, flatten_config, read_run
from rankjax.report.stats import DEFAULT_METRICS, available_metrics, default_metrics, group_stats, mean_ci
from rankjax.report.values import MISSING, RunError, number, read_json
from rankjax.report.write import write_report

__all__ = [
    "BOOKKEEPING", "CURVE_METRICS", "DEFAULT_METRICS", "MISSING", "PRUNE", "SEED_KEYS", "UNITS", "Group", "Report",
    "Run", "RunError", "attach_eval", "available_metrics", "build_report", "cell", "collect_runs", "comparable",
    "default_metrics", "eval_values", "external_evals", "find_run_dirs", "flatten_config", "group_runs",
    "group_stats", "is_results", "is_seed_key", "main", "markdown", "mean_ci", "num", "own_evals", "plot_curves",
    "plot_metrics", "read_json", "read_run", "report_dict", "seed_label", "sort_value", "stat_cell", "table",
    "varying_keys", "write_csv", "write_report",
]
