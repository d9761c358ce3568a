"""StopSignal (alignlab/runtime/signals.py): SIGTERM/SIGINT become a flag; handlers are restored."""

from __future__ import annotations

import os
import signal
import time

import pytest

from alignlab.runtime import StopSignal


def wait_for(predicate, timeout=2.0):
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        time.sleep(0.01)
    return predicate()


def test_sigterm_sets_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_for(lambda: stop.requested)
        assert stop.signal_name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM is only logged
        time.sleep(0.05)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_second_sigint_raises_keyboard_interrupt():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with StopSignal() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert wait_for(lambda: stop.requested)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
    assert signal.getsignal(signal.SIGINT) == before
