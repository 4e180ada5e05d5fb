"""``python -m gateway``: the same as the ``dialgate`` console script."""

from gateway.cli.main import main

raise SystemExit(main())
