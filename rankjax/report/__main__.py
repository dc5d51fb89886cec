"""python -m rankjax.report DIR... (see `rankjax.report.command`)."""

import sys

from rankjax.report.command import main

sys.exit(main())
