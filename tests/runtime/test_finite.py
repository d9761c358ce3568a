"""check_finite (alignlab/runtime/finite.py)."""

from __future__ import annotations

import pytest
import torch

from alignlab.errors import NonFiniteLossError
from alignlab.runtime import check_finite


def test_finite_loss_passes():
    check_finite(torch.tensor(1.5), 1, torch.tensor([0, 1]))


def test_nan_names_step_and_rows():
    with pytest.raises(NonFiniteLossError) as e:
        check_finite(torch.tensor(float("nan")), 12, torch.tensor([3, 17, 40]))
    assert str(e.value) == "non-finite loss (nan) at step 12; batch rows: [3, 17, 40]"


def test_inf_and_packed_rows():
    with pytest.raises(NonFiniteLossError, match=r"\(inf\) at step 3; batch rows: \[\[1, 2\], \[5\]\]"):
        check_finite(torch.tensor(float("inf")), 3, [[1, 2], [5]])
    with pytest.raises(NonFiniteLossError, match=r"\(-inf\) at step 4; batch rows: unknown"):
        check_finite(torch.tensor(float("-inf")), 4, None)


def test_guard_names_first_bad_step_without_per_step_sync():
    from alignlab.runtime import FiniteGuard

    guard = FiniteGuard()
    guard.record(1, torch.tensor(0.5), [1, 2])
    guard.record(2, torch.tensor(float("inf")), [3, 4])
    guard.record(3, torch.tensor(float("nan")), [5, 6])
    with pytest.raises(NonFiniteLossError, match=r"at step 2; batch rows: \[3, 4\]"):
        guard.check()
    guard.record(4, torch.tensor(1.0), [7])
    guard.check()  # pending list was cleared; a finite step passes
