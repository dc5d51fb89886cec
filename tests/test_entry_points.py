"""Every command alike, in process: its flags parse through `rankjax.cli.parse_flags` and its main runs under
`cli.exit_on_config_error`, so a bad flag, override, config file or config value is one line on stderr and exit
status 2 (no traceback); `cli.init_distributed` is the one multi-host start. The flags go into a fresh
absl FlagValues per test, so the commands' --config flags never meet."""

import importlib
import sys

import jax
import pytest
from absl import flags

from rankjax import cli
from rankjax.models.errors import ConfigError

COMMANDS = {  # module: (its config file, the flags it requires besides --config)
    "rankjax.main": ("configs/synthetic_sft.py", ["--workdir={tmp}/run"]),
    "rankjax.demo": ("configs/demo.py", ["--workdir={tmp}/run"]),
    "rankjax.evaluate": ("configs/eval_math.py", ["--workdir={tmp}/run"]),
    "rankjax.preview": ("configs/synthetic_sft.py", []),
    "rankjax.diagnostics.noise": ("configs/noise_diagnostic.py", ["--workdir={tmp}/run"]),
}


@pytest.fixture(autouse=True)
def _own_sys_argv(monkeypatch):
  """ml_collections reads the --config.* overrides from sys.argv (absl's app.run parses sys.argv too)."""
  monkeypatch.setattr(sys, "argv", list(sys.argv))


def _command(name, tmp_path, *extra):
  """(module, argv) of command `name` with its config file, required flags and `extra`, its flags defined in a
  fresh FlagValues that `argv` (also sys.argv) has been parsed into."""
  module = importlib.import_module(name)
  config, required = COMMANDS[name]
  argv = [name, f"--config={config}", *(f.format(tmp=tmp_path) for f in required), *extra]
  sys.argv[:] = argv
  values = flags.FlagValues()
  module.define_flags(values)
  cli.parse_flags(argv, flag_values=values)
  return module, argv


def _one_line_exit(capsys, call) -> str:
  """Runs `call`; asserts it exits with status 2 and one line on stderr (no traceback); returns the line."""
  with pytest.raises(SystemExit) as exit_info:
    call()
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("rankjax: ") and "Traceback" not in err, err
  return err.strip()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_bad_override_is_one_line(tmp_path, capsys, name):
  line = _one_line_exit(capsys, lambda: _command(name, tmp_path, "--config.no_such_key=1"))
  assert line == "rankjax: the config has no field 'no_such_key' in --config.no_such_key=1"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_unknown_flag_is_one_line(tmp_path, capsys, name):
  line = _one_line_exit(capsys, lambda: _command(name, tmp_path, "--wrkdir=x"))
  assert "Unknown command line flag 'wrkdir'" in line


def test_preview_bad_flag_value_and_missing_config_are_one_line(tmp_path, capsys):
  line = _one_line_exit(capsys, lambda: _command("rankjax.preview", tmp_path, "--n=zero"))
  assert "--n=zero" in line
  line = _one_line_exit(capsys, lambda: _command("rankjax.preview", tmp_path, "--n=0"))
  assert "--n=0" in line and "positive" in line
  values = flags.FlagValues()
  importlib.import_module("rankjax.preview").define_flags(values)
  sys.argv[:] = ["preview"]
  line = _one_line_exit(capsys, lambda: cli.parse_flags(["preview"], flag_values=values))
  assert "--config" in line


def test_an_argument_that_is_not_a_flag_is_one_line(tmp_path, capsys):
  values = flags.FlagValues()
  importlib.import_module("rankjax.evaluate").define_flags(values)
  sys.argv[:] = ["evaluate", "--config=configs/eval_math.py", f"--workdir={tmp_path}", "extra"]
  line = _one_line_exit(capsys, lambda: cli.command.parse_flags_only(sys.argv, flag_values=values))
  assert "unexpected arguments ['extra']" in line


def test_missing_config_file_is_one_line(tmp_path, capsys):
  line = _one_line_exit(capsys, lambda: _command("rankjax.diagnostics.noise", tmp_path,
                                                 f"--config={tmp_path / 'nofile.py'}"))
  assert "cannot load the config file" in line and "nofile.py" in line


@pytest.mark.parametrize("name,extra,needle", [
    # a validator in train/config.py (via data/sources.py), before the workdir exists
    ("rankjax.main", ["--config.data.source=jsonl"], "config.data.source='jsonl' needs config.data.files.manual_dir"),
    # the example: the demo's synthetic corpus sizes do not apply to file sources
    ("rankjax.demo", ["--config.data.source=jsonl", "--config.data.files.manual_dir={tmp}"],
     "not apply to config.data.source='jsonl'"),
    ("rankjax.evaluate", ["--config.num_samples=0"], "eval config: num_samples=0 must be positive"),
    ("rankjax.preview", ["--config.data.source=jsonl"], "config.data.source='jsonl' needs"),
    ("rankjax.diagnostics.noise", ["--config.checkpoint={tmp}", "--config.noise.rate=0.9"],
     "config.noise.rate=0.9 must be in (0, 0.5]"),
])
def test_config_validation_error_is_one_line(tmp_path, capsys, name, extra, needle):
  module, _ = _command(name, tmp_path, *(f.format(tmp=tmp_path) for f in extra))
  line = _one_line_exit(capsys, lambda: cli.exit_on_config_error(module.main)([name]))
  assert needle in line
  assert not (tmp_path / "run").exists()


def test_demo_config_with_a_file_source_says_what_to_do(tmp_path, capsys):
  """Issue 29's case: the demo config sets synthetic corpus sizes; with a file source the one line names each
  stray field, the config to start from and the flags that reset them."""
  module, _ = _command("rankjax.demo", tmp_path, "--config.data.source=jsonl",
                       f"--config.data.files.manual_dir={tmp_path}")
  line = _one_line_exit(capsys, lambda: cli.exit_on_config_error(module.main)(["rankjax.demo"]))
  assert "config.data.synthetic.num_eval=300" in line
  assert "Start from" in line and "configs/gsm8k_tiny.py" in line
  assert "--config.data.synthetic.num_eval=" in line


def test_data_error_is_one_line(tmp_path, capsys):
  """A DataError (here: a file source whose directory has no data files) is one line and exit 2, like a config
  error; it is found after the workdir exists, which then holds config.json only."""
  (tmp_path / "files").mkdir()
  module, _ = _command("rankjax.main", tmp_path, "--config.data.source=jsonl",
                       f"--config.data.files.manual_dir={tmp_path / 'files'}",
                       f"--config.data.files.tfds_data_dir={tmp_path / 'tfds'}")
  line = _one_line_exit(capsys, lambda: cli.exit_on_config_error(module.main)(["rankjax.main"]))
  assert f"no data files in {tmp_path / 'files'}" in line


def test_main_names_the_demo_command_for_the_demo_config(tmp_path, capsys):
  module, _ = _command("rankjax.main", tmp_path, "--config=configs/demo.py")
  line = _one_line_exit(capsys, lambda: cli.exit_on_config_error(module.main)(["rankjax.main"]))
  assert "python -m rankjax.demo" in line
  assert not (tmp_path / "run").exists()


def test_demo_refuses_a_config_without_demo_fields(tmp_path, capsys):
  module, _ = _command("rankjax.demo", tmp_path, "--config=configs/synthetic_sft.py")
  line = _one_line_exit(capsys, lambda: cli.exit_on_config_error(module.main)(["rankjax.demo"]))
  assert "config.demo" in line


def test_a_bug_keeps_its_traceback():
  """Only ConfigError becomes one line: a plain ValueError (a bug) propagates."""
  def main(argv):
    raise ValueError(f"a bug with {argv}")
  with pytest.raises(ValueError, match="a bug"):
    cli.exit_on_config_error(main)(["x"])
  assert issubclass(ConfigError, ValueError)  # callers that catch ValueError still catch it


def test_importing_every_command_defines_no_flags():
  for name in COMMANDS:
    importlib.import_module(name)
  assert not {"config", "workdir", "distributed"} & set(flags.FLAGS)


@pytest.fixture
def initialize_calls(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *args, **kwargs: calls.append((args, kwargs)))
  for env in cli.distributed.ENV.values():
    monkeypatch.delenv(env, raising=False)
  return calls


def test_init_distributed_from_flags_and_environment(initialize_calls, monkeypatch):
  values = flags.FlagValues()
  holders = cli.define_distributed_flags(values)
  values(["x"])
  assert not cli.init_distributed_from_flags(holders) and not initialize_calls  # --distributed not given
  values(["x", "--distributed", "--coordinator_address=h:1", "--num_processes=2", "--process_id=1",
          "--heartbeat_timeout_s=10"])
  assert cli.init_distributed_from_flags(holders)
  assert initialize_calls[-1] == (("h:1", 2, 1), {"heartbeat_timeout_seconds": 10, "shutdown_timeout_seconds": 10})
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "e:2")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  cli.init_distributed()  # the environment fills what no flag gives
  assert initialize_calls[-1][0] == ("e:2", 4, 3)
  cli.init_distributed(num_processes=8, process_id=0)  # a flag wins over its variable
  assert initialize_calls[-1][0] == ("e:2", 8, 0)
  assert jax.config.jax_cpu_collectives_implementation == "gloo"


def test_init_distributed_bad_environment_is_a_config_error(initialize_calls, monkeypatch):
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES='two' is not an integer"):
    cli.init_distributed()
  with pytest.raises(ConfigError, match="--heartbeat_timeout_s=0"):
    cli.init_distributed(num_processes=2, heartbeat_timeout_s=0)
  assert not initialize_calls


@pytest.mark.parametrize("argv,needle", [
    (["local", "--tpu_name=pod"], "--tpu_name does not apply to the local launcher"),
    (["tpu"], "the tpu launcher needs --tpu_name, --zone"),
    (["local", "--parallel=0"], "flag --parallel=0: 0 is not a positive integer"),
    (["local", "--paralel=2"], "Unknown command line flag 'paralel'"),
    ([], "give one launcher, local / slurm / tpu"),
    (["tpu", "--tpu_name=pod", "--zone=z", "--queued_resource"], "--queued_resource needs --accelerator_type"),
])
def test_launch_flag_errors_are_one_line(tmp_path, capsys, argv, needle):
  from rankjax import launch  # noqa: PLC0415
  line = _one_line_exit(capsys, lambda: launch.main([*argv, "--config=configs/synthetic_sft.py",
                                                     f"--workdir={tmp_path}"]))
  assert needle in line


def test_launch_takes_the_hyphenated_spellings_and_space_separated_values(tmp_path, capsys):
  from rankjax import launch  # noqa: PLC0415
  args, overrides = launch.parse_args(["slurm", "--config", "configs/synthetic_sft.py", f"--workdir={tmp_path}",
                                       "--dry-run", "--gpus-per-node=4", "--job-name=j", "--config.seed=3"])
  assert (args.launcher, args.dry_run, args.gpus_per_node, args.job_name) == ("slurm", True, 4, "j")
  assert args.config == "configs/synthetic_sft.py" and overrides == ["--config.seed=3"]


@pytest.mark.parametrize("argv,needle", [
    ([], "give the folders to search for runs"),
    (["{tmp}", "--outt={tmp}"], "Unknown command line flag 'outt'"),
])
def test_report_flag_errors_are_one_line(tmp_path, capsys, argv, needle):
  from rankjax import report  # noqa: PLC0415
  line = _one_line_exit(capsys, lambda: report.main([a.format(tmp=tmp_path) for a in argv]))
  assert needle in line
