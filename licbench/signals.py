"""Signal handlers installed for the length of a command.

A SIGTERM (``kill PID``, a batch system's time limit, a container stopping) is a request to stop,
like Ctrl-C: licbench treats both alike, so that a stopped run reaps its worker processes and a
stopped training run saves its checkpoint, instead of Python's default for SIGTERM, which ends
the process at once and leaves its workers to finish their jobs for nobody.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

Handler = Callable[[int, FrameType | None], object]


@contextmanager
def handling(handler: Handler, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[None]:
    """``handler`` for ``signals`` inside the block, the previous handlers after it. Signal
    handlers belong to the main thread: called from another thread, this installs nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in signals}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def interrupt(signum: int, frame: FrameType | None) -> None:
    """Raise KeyboardInterrupt, what Python's own SIGINT handler does."""
    raise KeyboardInterrupt
