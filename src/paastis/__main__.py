"""Lets `python -m paastis` run the same program as the `paastis` console script."""

from paastis.cli import main

raise SystemExit(main())
