"""Runs a command's absl `main`: flags parsed by `parsing.parse_flags`, an `InputError` as one line on stderr."""

from collections.abc import Callable

from absl import app, flags

from rankjax.cli import parsing


def exit_on_config_error(main: Callable[[list[str]], object]) -> Callable[[list[str]], object]:
  """`main` that exits with status 2 and one line on stderr when it raises an `InputError` (a `ConfigError`: a
  config value no run can use, found by a validator after parsing; a `DataError`: a data file, split or record
  that cannot be used); every other exception propagates with its traceback."""

  def guarded(argv: list[str]):
    # Imported here: importing rankjax.models loads JAX, and the JAX-free commands (launch, report) import cli.
    from rankjax.models.errors import InputError  # noqa: PLC0415
    try:
      return main(argv)
    except InputError as e:
      parsing.exit_with_usage_error(str(e))

  return guarded


def parse_flags_only(argv: list[str], config_flag: str | None = "config", flag_values=None) -> list[str]:
  """`parsing.parse_flags` for a command that takes flags only: an argument that is not a flag is one line on
  stderr and exit status 2."""
  rest = parsing.parse_flags(argv, config_flag, flag_values)
  if len(rest) > 1:
    parsing.exit_with_usage_error(f"unexpected arguments {rest[1:]} (flags are written --flag=value)")
  return rest


def run(main: Callable[[list[str]], object], define_flags: Callable[[flags.FlagValues], object],
        config_flag: str | None = "config") -> None:
  """The `if __name__ == "__main__":` of a command that takes flags only: defines its flags
  (`define_flags(flags.FLAGS)`), parses sys.argv with `parse_flags_only` and calls `main(argv)`; never returns
  (absl exits with main's return value as status)."""
  define_flags(flags.FLAGS)
  app.run(exit_on_config_error(main), flags_parser=lambda argv: parse_flags_only(argv, config_flag))
