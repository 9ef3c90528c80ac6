"""A clean stop on SIGINT (Ctrl-C) and SIGTERM: the training loop saves a resumable state at its next
synchronisation point and raises :class:`TrainingStopped`."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("abnet")


class TrainingStopped(Exception):
    """Training was stopped by SIGINT / SIGTERM after writing a resumable state."""


class StopFlag:
    """Set to the signal's name when one arrives."""

    signal: str | None = None

    @property
    def raised(self) -> bool:
        return self.signal is not None


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """While training, SIGINT and SIGTERM only raise a flag; a second signal interrupts at once. Outside the
    main thread nothing is installed (signals reach only the main thread)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.raised:
            raise KeyboardInterrupt
        flag.signal = signal.Signals(signum).name
        log.warning("%s received: saving a resumable state at the next log step", flag.signal)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
