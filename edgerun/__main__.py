"""``python -m edgerun`` is the ``edgerun`` command."""

from edgerun.cli.main import entry

entry()
