"""Progress (alignlab/runtime/progress.py)."""

from __future__ import annotations

import itertools

from alignlab.runtime import Progress


def test_progress_writes_to_stderr_and_resumes(capsys, monkeypatch):
    clock = itertools.count()
    monkeypatch.setattr("alignlab.runtime.progress.time.perf_counter", lambda: next(clock))
    bar = Progress(10, initial=4)
    assert bar.bar.n == 4
    bar.update(5, tokens=100)
    bar.update(6, loss=2.5, tokens=100)
    assert bar.bar.n == 6 and bar.loss == 2.5 and bar.tokens_per_s == 100.0
    bar.set_loss(1.25)
    bar.close()
    out = capsys.readouterr()
    assert out.out == "" and "6/10" in out.err and "loss=1.25" in out.err and "tok/s=100" in out.err


def test_progress_disabled_prints_nothing(capsys):
    bar = Progress(3, enabled=False)
    for step in range(1, 4):
        bar.update(step, loss=1.0, tokens=5)
    bar.close()
    assert capsys.readouterr().err == ""
