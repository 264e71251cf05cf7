"""The command line (``scarkids ...`` and the seed's ``python main.py --mode ...``): the
train, inference and sequential pipelines, their logs, and the demo."""

from scarkids.cli.commands import main

__all__ = ["main"]
