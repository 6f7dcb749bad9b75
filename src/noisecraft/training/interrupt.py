"""Ctrl-C (SIGINT) and SIGTERM as a request to stop at the next step boundary, save, and exit.

Stopping between steps, never inside one, is what keeps the saved state consistent: a
KeyboardInterrupt raised inside ``optimizer.step()`` could leave half the parameters updated. A
second Ctrl-C while the first is being honoured aborts at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType


class GracefulInterrupt:
    """Context manager: ``requested`` turns True on the first SIGINT/SIGTERM; the second raises."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, quiet: bool = False):
        self.requested, self.quiet = False, quiet
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if not self.quiet:
            print(
                "\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr
            )

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():  # handlers can only live there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
