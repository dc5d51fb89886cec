"""Sweeps declared in config files: the runs' overrides, their names, workdirs and command lines, and whether a
run has finished (`is_finished`, from `rankjax.rundir.progress`). Pure Python: importing this module imports no
JAX (loading a config file does, since the config files build on `rankjax.train.config`).

A config file declares its sweep next to its defaults (big_vision's style):

    from rankjax import sweeps

    def get_sweep():
      return sweeps.product(seed=[0, 1, 2], **{"loss.name": ["sft", "dft", "ranktuner"]})

`get_sweep()` returns a list whose entries are override dicts ({dotted.key: value}; the run's name is
`run_name(overrides)`) or (name, overrides) pairs (an explicit name, as in experiments/sweeps/*.py). Each run
trains in SWEEPDIR/<name>: `python -m rankjax.main --config=CONFIG --workdir=SWEEPDIR/<name> --config.k=v ...`.
`load_sweep` validates every run's overrides against the config (`rankjax.train.config.with_overrides`, and the
loss's choices), so a typo fails, naming the key and the config file, before anything runs.

Run names (`run_name`): the overrides sorted by key, each written `key-value`, joined by `_`; a value is written
as text (strings as they are, bools True/False, floats as repr, tuples and lists as their items joined by `,`,
nested dicts as `k=v` pairs joined by `,`), and then every character outside `[A-Za-z0-9._,+-]` becomes `-`
(runs of them one `-`): {"seed": 1, "loss.name": "dft"} -> `loss.name-dft_seed-1`. So the name depends on the
overrides only (not on their order in the dict), and it is a single path component. An empty dict is `default`;
a name longer than 120 characters keeps its first 111 and appends `-` and 8 hex digits of a hash of the whole
(unsanitised) text. Two runs of one sweep with the same name are an error (`load_sweep`); give such runs explicit
(name, overrides) pairs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import os
import re

from rankjax.rundir.progress import is_finished  # noqa: F401 (re-exported: the launchers call sweeps.is_finished)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._,+-]+")


# ----------------------------------------------------------------------------------------------------- building


def _factors(sweeps, axes) -> list[list[dict]]:
  """The factors of product/zip_: each positional argument is a list of override dicts; each keyword `key=values`
  is the factor [{key: v} for v in values]."""
  factors = []
  for i, s in enumerate(sweeps):
    s = list(s)
    if not all(isinstance(o, dict) for o in s):
      raise TypeError(f"argument {i} is not a list of override dicts: {s!r}")
    factors.append([dict(o) for o in s])
  for key, values in axes.items():
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
      raise TypeError(f"{key}={values!r}: give a list of values")
    factors.append([{key: v} for v in values])
  return factors


def _merge(dicts) -> dict:
  out = {}
  for d in dicts:
    clash = sorted(set(out) & set(d))
    if clash:
      raise ValueError(f"the key(s) {clash} are set by two factors of one sweep")
    out.update(d)
  return out


def product(*sweeps, **axes) -> list[dict]:
  """Every combination: product(seed=[0, 1], **{"loss.name": ["sft", "dft"]}) ->
  [{seed: 0, loss.name: sft}, {seed: 0, loss.name: dft}, {seed: 1, loss.name: sft}, {seed: 1, loss.name: dft}].

  Positional arguments are lists of override dicts (a sub-sweep, e.g. another product or zip_), keywords are
  `key=[values]`; factors in order (positional ones first), the last varying fastest, as in itertools.product.
  A key set by two factors is a ValueError.
  """
  return [_merge(combo) for combo in itertools.product(*_factors(sweeps, axes))]


def zip_(*sweeps, **axes) -> list[dict]:
  """Element-wise: zip_(**{"optimizer.learning_rate": [1e-3, 3e-4], "total_steps": [100, 300]}) -> 2 runs.
  Arguments as for `product`; factors of different lengths are a ValueError."""
  factors = _factors(sweeps, axes)
  lengths = [len(f) for f in factors]
  if len(set(lengths)) > 1:
    names = [f"argument {i}" for i in range(len(sweeps))] + list(axes)
    raise ValueError("zip_: the factors have different lengths: "
                     + ", ".join(f"{n}: {k}" for n, k in zip(names, lengths)))
  return [_merge(combo) for combo in zip(*factors)]


zipped = zip_


# -------------------------------------------------------------------------------------------------------- names


def _name_text(value) -> str:
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (tuple, list)):
    return ",".join(_name_text(v) for v in value)
  if isinstance(value, dict) or hasattr(value, "items"):
    return ",".join(f"{k}={_name_text(v)}" for k, v in sorted(dict(value).items()))
  return str(value)


def run_name(overrides: dict) -> str:
  """A run's name from its overrides, stable and a valid path component (the rule is in the module docstring):
  {"loss.name": "dft", "seed": 1} -> "loss.name-dft_seed-1"."""
  if not overrides:
    return "default"
  text = "_".join(f"{key}-{_name_text(overrides[key])}" for key in sorted(overrides))
  name = _UNSAFE.sub("-", text)
  if len(name) > MAX_NAME:
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    name = f"{name[:MAX_NAME - 9]}-{digest}"
  return name


def check_name(name: str) -> str:
  """`name` if it can be one directory of a sweep, else ValueError."""
  if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
    raise ValueError(f"run name {name!r} is not a single path component")
  return name


# -------------------------------------------------------------------------------------------- command-line flags


def format_value(value) -> str:
  """The text of `--config.key=TEXT` that ml_collections parses back to `value` (ints, floats, bools, strings,
  tuples/lists of them)."""
  if isinstance(value, bool):
    return "True" if value else "False"
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, int):
    return str(value)
  if isinstance(value, str):
    return value  # a string field takes the flag's text as it is
  if isinstance(value, (tuple, list)):
    items = ", ".join(repr(v) for v in value)
    return f"({items},)" if len(value) == 1 else f"({items})"
  if value is None:
    return "None"
  raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as a --config flag")


def parse_flag(text: str, current):
  """The value of the flag text `text` for a field whose current value is `current`, the way ml_collections's
  config flags parse it (bool, int, float, str, tuple)."""
  import ast
  if isinstance(current, bool):
    lowered = text.strip().lower()
    if lowered in ("true", "1", "t", "yes"):
      return True
    if lowered in ("false", "0", "f", "no"):
      return False
    raise ValueError(f"{text!r} is not a bool")
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text
  return tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value


def split_config_args(args) -> dict[str, str]:
  """{"a.b": "TEXT"} of `--config.a.b=TEXT` arguments (in order; a later one wins); ValueError for any other."""
  out = {}
  for arg in args:
    if not (arg.startswith("--config.") and "=" in arg):
      raise ValueError(f"unexpected argument {arg!r} (config overrides are written --config.a.b=value)")
    key, text = arg[len("--config."):].split("=", 1)
    out[key] = text
  return out


# -------------------------------------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: its name, the sweep's overrides, the --config flags of its command line (the launcher's
  own --config.* overrides first, then the sweep's; the sweep wins on a key both set) and its total_steps."""
  name: str
  overrides: dict
  flags: tuple
  total_steps: int

  def workdir(self, sweep_dir: str) -> str:
    return os.path.join(sweep_dir, self.name)

  def command(self, python: str, config_path: str, sweep_dir: str, distributed: bool = False) -> list[str]:
    """`python -m rankjax.main [--distributed] --config=CONFIG --workdir=SWEEPDIR/NAME --config.k=v ...`."""
    return [python, "-m", "rankjax.main", *(["--distributed"] if distributed else []), f"--config={config_path}",
            f"--workdir={self.workdir(sweep_dir)}", *self.flags]


def resolve_path(path: str) -> str:
  """`path` relative to the working directory, else to the repository root (as `load_config_file`)."""
  if os.path.isfile(path):
    return path
  in_repo = os.path.join(ROOT, path)
  if os.path.isfile(in_repo):
    return in_repo
  raise FileNotFoundError(f"file {path} not found")


def _load_module(path: str):
  path = resolve_path(path)
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0] + "_sweep", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _entries(config_path: str, sweep_path: str | None) -> list[tuple[str, dict]]:
  """(name, overrides) of every entry of get_sweep() (the sweep file's, else the config file's)."""
  source = sweep_path or config_path
  module = _load_module(source)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{source} defines no get_sweep()")
  out = []
  for i, entry in enumerate(module.get_sweep()):
    if isinstance(entry, dict):
      name, overrides = run_name(entry), dict(entry)
    elif isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[1], dict):
      name, overrides = check_name(entry[0]), dict(entry[1])
    else:
      raise ValueError(f"{source}: get_sweep() entry {i} is neither an override dict nor a (name, overrides) "
                       f"pair: {entry!r}")
    out.append((name, overrides))
  names = [n for n, _ in out]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ValueError(f"{source}: get_sweep() has several runs named {twice}; make their overrides differ or give "
                     "them explicit (name, overrides) pairs")
  if not out:
    raise ValueError(f"{source}: get_sweep() returned no runs")
  return out


def plan(config_path: str, sweep_path: str | None = None, config_args=()) -> list[Run]:
  """The runs of the sweep of `config_path` (or of `sweep_path`'s get_sweep()), with `config_args`
  (`--config.a.b=value` strings) applied to every run. Every run's overrides are checked against the config:
  an unknown key, a value of the wrong type or an unknown loss choice is a ValueError naming the run, the key
  and the file."""
  from rankjax.losses import validate_config as validate_loss  # (these load JAX)
  from rankjax.train.config import load_config_file, with_overrides
  config = load_config_file(config_path)
  cli = split_config_args(config_args)
  cli_values = {}
  for key, text in cli.items():
    try:
      current = config
      for part in key.split("."):
        current = current[part]
      cli_values[key] = parse_flag(text, current)
    except (KeyError, AttributeError) as e:
      hint = str(e.args[0] if e.args else e).replace("\n", " ")
      raise ValueError(f"--config.{key}: {config_path} has no field {key!r} ({hint})") from e
    except (ValueError, TypeError) as e:
      raise ValueError(f"--config.{key}={text}: {e}") from e
  source = sweep_path or config_path
  runs = []
  for name, overrides in _entries(config_path, sweep_path):
    try:
      resolved = with_overrides(config, {**cli_values, **overrides})
      validate_loss(resolved.loss)
    except (KeyError, AttributeError, TypeError, ValueError) as e:
      where = f"{source}" if source == config_path else f"{source} (sweep of {config_path})"
      raise ValueError(f"{where}: run {name}: {e.args[0] if e.args else e} (overrides {overrides})") from e
    flags = [f"--config.{k}={t}" for k, t in cli.items() if k not in overrides]
    flags += [f"--config.{k}={format_value(v)}" for k, v in overrides.items()]
    runs.append(Run(name, overrides, tuple(flags), int(resolved.total_steps)))
  return runs


def load_sweep(config_path: str, sweep_path: str | None = None) -> list[tuple[str, dict]]:
  """[(name, overrides), ...] of the config file's get_sweep() (or `sweep_path`'s), every run validated
  against the config (see `plan`)."""
  return [(r.name, dict(r.overrides)) for r in plan(config_path, sweep_path)]
