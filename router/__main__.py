"""``python -m router``: the same command line as ``inference-router``."""

from router.cli import main

raise SystemExit(main())
