"""``python -m fanout``: the ``fanout`` command where its console script is not installed."""

from fanout.cli import main

raise SystemExit(main())
