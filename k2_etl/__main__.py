"""``python -m k2_etl`` is the ``k2`` command (the supervisor starts components this way)."""

from k2_etl.cli import main

main()
