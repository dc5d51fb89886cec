"""The errors that mean "the input is wrong", not "rankjax is wrong".

Every command turns an `InputError` (a `ConfigError` or a `DataError`) into one line on stderr and exit status 2
(`rankjax.cli.run`); any other exception, a plain ValueError included, is a bug and keeps its traceback."""


class InputError(ValueError):
  """A value or file supplied by the user that no run can use; the message names it and where it is."""


class ConfigError(InputError):
  """A config field (or a flag, or an environment variable a command reads) holds a value no run can use; the
  message names it, e.g. "config.data.source='jsonl' needs config.data.files.manual_dir"."""


class DataError(InputError):
  """A data file, split or record that cannot be used (missing, empty, unreadable, nothing to supervise); the
  message names the file or record and the config field that points at it."""


class DataFileNotFoundError(DataError, FileNotFoundError):
  """A data file or directory named by the config does not exist (also a FileNotFoundError)."""
