"""``python -m mailman ...`` and the ``mailman`` script: a shim over :func:`mailman.cli.main`."""

from __future__ import annotations

import sys

from mailman.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
