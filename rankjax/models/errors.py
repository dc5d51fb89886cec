"""The error a config validator raises for a value no run can use.

Every command turns a `ConfigError` into one line on stderr and exit status 2 (`rankjax.cli.run`); any other
exception, a plain ValueError included, is a bug and keeps its traceback."""


class ConfigError(ValueError):
  """A config field (or a flag, or an environment variable a command reads) holds a value no run can use; the
  message names it, e.g. "config.data.source='jsonl' needs config.data.files.manual_dir"."""
