"""Turn SIGTERM/SIGINT into a flag the training loop checks, so a preempted job saves and exits cleanly.

    with StopSignal() as stop:
        for step in ...:
            ...
            if stop.requested:
                save_checkpoint(...)
                break

A second SIGINT (Ctrl-C pressed twice) while stopping raises KeyboardInterrupt for an immediate exit.
"""

from __future__ import annotations

import logging
import signal
import threading

logger = logging.getLogger("alignlab")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """Context manager: while active, SIGTERM/SIGINT set `.requested` instead of killing the process.

    Handlers can only be installed from the main thread; elsewhere this is a no-op (`.requested` stays
    False) and a warning is logged. Previous handlers are restored on exit.
    """

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("StopSignal outside the main thread: SIGTERM/SIGINT will not be caught")
            return self
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt(f"second {name} while stopping")
            logger.warning("received %s again; already stopping after this step", name)
            return
        self.requested, self.signal_name = True, name
        logger.warning("received %s: will save a checkpoint and stop after this step "
                       "(press Ctrl-C again to stop immediately)", name)
