"""Process signals of the long-running commands (stdlib only: the CLIs import it before
``--help`` is answered)."""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, a batch scheduler's stop) as Ctrl-C inside the block,
    so a command's KeyboardInterrupt path runs: what is finished is kept, locks released,
    exit 130, instead of dying with 143 mid-way. The previous handler is put back after
    (commands also run inside test processes); only the main thread can set a handler, so
    elsewhere SIGTERM stays as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
