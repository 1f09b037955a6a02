"""The ``mailman`` command line (``mailman ...``, or ``python -m mailman ...``).

One module per command group: :mod:`~mailman.cli.main` (the argparse wiring and exit codes),
:mod:`~mailman.cli.serve`, :mod:`~mailman.cli.database` (``migrate``),
:mod:`~mailman.cli.newsletters`, :mod:`~mailman.cli.subscribers` (with the CSV reader in
:mod:`~mailman.cli.csv_import`), :mod:`~mailman.cli.letters`, :mod:`~mailman.cli.tree`,
:mod:`~mailman.cli.demo`; :mod:`~mailman.cli.output` (human text or ``--json``) and
:mod:`~mailman.cli.progress` (the progress bar) serve them all.
"""

from mailman.cli.main import main

__all__ = ["main"]
