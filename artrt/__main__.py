"""``python -m artrt``: the same as the ``artrt`` command."""

from artrt.cli import main

raise SystemExit(main())
