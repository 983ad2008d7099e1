"""The `batchrun` command: parse, call the library, report. Exit codes follow Contract 3.

`common` holds the command group and what the commands share; each command lives in the module of its
concern, which registers it on the group when imported here.
"""

from batchrun.cli import emulate, look, run  # noqa: F401  (registers the commands)
from batchrun.cli.common import main

__all__ = ["main"]
