"""Flag parsing for every command: absl flags (`--flag=value`), `--config=FILE` and `--config.key=value` overrides.

absl reports a bad flag in two lines and exit status 1; ml_collections reports an override that names no config
field (AttributeError, KeyError) and a config file that does not load (OSError, deferred to the config's first
use) as exceptions that absl prints as tracebacks. Here each is one line on stderr and exit status 2."""

import sys

from absl import flags

USAGE_EXIT = 2  # a bad flag, override, config file or config value: the command line is wrong


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


def exit_with_usage_error(message: str) -> None:
  """Prints `rankjax: MESSAGE` (one line) on stderr and exits with status 2."""
  one_line = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
  print(f"rankjax: {one_line}", file=sys.stderr, flush=True)
  sys.exit(USAGE_EXIT)


def parse_flags(argv: list[str], config_flag: str | None = "config", flag_values=None) -> list[str]:
  """absl's flag parsing for `app.run(main, flags_parser=parse_flags)`: parses `argv` into `flag_values` (default:
  absl's global FLAGS) and returns the arguments that are not flags; exits with status 2 and one line naming the
  bad flag, override or config file. `config_flag`: the config file flag whose loading is checked here (None:
  the command has none)."""
  flag_values = flags.FLAGS if flag_values is None else flag_values
  try:
    rest = flag_values(argv)
    config = flag_values[config_flag].value if config_flag and config_flag in flag_values else None
    if config is not None:
      config.keys()  # a file that failed to load raises here: ml_collections defers the error to first use
    return rest
  except flags.Error as e:  # unknown flag, bad value, missing required flag
    exit_with_usage_error(f"{e} (--helpfull lists the flags)")
  except (AttributeError, KeyError, OSError) as e:
    exit_with_usage_error(config_error_message(e, argv))
