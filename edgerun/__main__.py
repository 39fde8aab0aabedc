"""``python -m edgerun`` is the ``edgerun`` command."""

from edgerun.cli.main import main

raise SystemExit(main())
