"""A time limit for in-process model work: the learned codecs' share of ``licbench run --timeout``.

External codecs are killed by their subprocess timeout; a torch computation in this process cannot
be killed, so the loops whose length grows with the image or the settings (MSP's context passes,
the autoregressive raster scan, the latent-overfitting iterations) call :func:`check_deadline`
between steps, and the adapter turns :class:`DeadlineExceeded` into a codec timeout. A single
network pass is never interrupted, so the limit is kept to within one pass.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[tuple[float, float] | None] = ContextVar("licbench_deadline", default=None)


class DeadlineExceeded(TimeoutError):
    """The work under :func:`deadline` ran past its time limit."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Make :func:`check_deadline` raise once ``seconds`` have passed (inside this block only)."""
    token = _deadline.set((time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _deadline.reset(token)


def check_deadline() -> None:
    """Raise :class:`DeadlineExceeded` if the enclosing :func:`deadline` has passed (no-op outside one)."""
    current = _deadline.get()
    if current is not None and time.monotonic() > current[0]:
        raise DeadlineExceeded(f"stopped after the time limit of {current[1]:g} s")
