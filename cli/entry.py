"""The ``cbdm`` console entry point.

A command's module loads torch and friends when it runs (seconds). A Ctrl-C in that
window would print a traceback from deep inside an import; nothing has been written yet,
so it exits quietly instead (status 130).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Optional


def _interrupted_while_starting(signum: int, frame: Optional[FrameType]) -> None:
    sys.stderr.write("Error: interrupted during start-up; nothing was written\n")
    sys.stderr.flush()
    os._exit(130)


def main() -> None:
    previous = signal.signal(signal.SIGINT, _interrupted_while_starting)
    from .main import main as run_cli

    signal.signal(signal.SIGINT, previous)
    run_cli()


if __name__ == "__main__":
    main()
