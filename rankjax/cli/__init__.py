"""What every command (`python -m rankjax.main`, `.demo`, `.evaluate`, `.data.preview`, `.diagnostics.noise`,
`.launch`) shares: absl flag parsing with one-line errors (`parsing`), a runner that turns config errors into one
line (`command`), and the multi-host start of JAX (`distributed`)."""

from rankjax.cli.command import exit_on_config_error, run
from rankjax.cli.distributed import define_distributed_flags, init_distributed, init_distributed_from_flags
from rankjax.cli.parsing import config_error_message, exit_with_usage_error, parse_flags

__all__ = ["config_error_message", "define_distributed_flags", "exit_on_config_error", "exit_with_usage_error",
           "init_distributed", "init_distributed_from_flags", "parse_flags", "run"]
