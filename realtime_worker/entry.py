"""The ``realtime-worker`` console script: holds early signals for ``run``, then the CLI.

Kept free of every import but the standard library and :mod:`~realtime_worker.early_signals`,
so that the hold starts before the seconds the CLI's imports take.
"""

from __future__ import annotations

import sys

from realtime_worker import early_signals


def main() -> int:
    if sys.argv[1:2] == ["run"]:
        early_signals.hold()
    from realtime_worker.cli import main as cli_main  # after the hold

    return cli_main()
