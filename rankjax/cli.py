"""Flag parsing for the command-line entry points that take `--config=FILE` and `--config.key=value` overrides.

ml_collections reports an override that names no config field (AttributeError, KeyError) and a config file that
does not load (OSError, deferred to the config's first use) as exceptions that absl prints as tracebacks; here
they become one line on stderr and exit status 2, like absl's own flag errors."""

import sys

from absl import app, flags


def _message_lines(error: BaseException) -> list[str]:
  """The lines of the innermost message of `error` (ml_collections wraps a KeyError in an AttributeError)."""
  detail = error.args[0] if error.args else error
  if isinstance(detail, BaseException):
    detail = detail.args[0] if detail.args else detail
  return str(detail).splitlines() or [""]


def config_error_message(error: BaseException, argv: list[str]) -> str:
  """One line saying what is wrong with the config flags in `argv`, given the exception parsing them raised."""
  lines = _message_lines(error)
  if isinstance(error, OSError):
    return f"cannot load the config file: {lines[-1].strip()}"  # e.g. [Errno 2] No such file or directory: ...
  key, hint = lines[0].strip("'\""), " ".join(line.strip() for line in lines[1:])
  named = [a for a in argv[1:] if a.startswith("--config.") and key in a.split("=", 1)[0][len("--config."):].split(".")]
  where = f" in {named[0]}" if named else ""
  return f"the config has no field {key!r}{where}" + (f" ({hint})" if hint else "")


def parse_flags(argv: list[str], config_flag: str = "config") -> list[str]:
  """absl's flag parsing for `app.run(main, flags_parser=parse_flags)`: returns the arguments that are not
  flags; exits with status 2 and one line naming the bad override or file when the config cannot be built."""
  try:
    rest = app.parse_flags_with_usage(argv)
    config = flags.FLAGS[config_flag].value
    if config is not None:
      config.keys()  # a file that failed to load raises here: ml_collections defers the error to first use
    return rest
  except (AttributeError, KeyError, OSError) as e:
    print(f"rankjax: {config_error_message(e, argv)}", file=sys.stderr, flush=True)
    sys.exit(2)
