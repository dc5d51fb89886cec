"""python -m rankjax.plan --config=... --topology=... (see `rankjax.plan.command`)."""

from rankjax import cli
from rankjax.plan.command import define_flags, main

cli.run(main, define_flags)
