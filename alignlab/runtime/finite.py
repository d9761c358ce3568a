"""Stop the run with a useful message when the loss stops being a finite number."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from alignlab.errors import NonFiniteLossError


def check_finite(loss: torch.Tensor, step: int, row_ids: torch.Tensor | Iterable | None = None) -> None:
    """Raise NonFiniteLossError naming the step and the batch's dataset rows if `loss` is NaN or inf.

    Cost: exactly one `torch.isfinite(loss).all().item()`, i.e. one host-device sync. That is free on CPU
    and small on GPU for a detached scalar, which is why recipes call it every step: catching the first bad
    step names the rows that caused it, while checking only at logging intervals would report a later step
    whose batch is innocent. The message is built only on failure.

    Args:
        loss: the (detached) loss, usually a scalar; any shape is accepted.
        step: optimizer step, for the message.
        row_ids: `batch["row_ids"]` (B,) tensor, a list, or a list of lists for packed rows.
    """
    if torch.isfinite(loss).all().item():
        return
    values = loss.detach().float().reshape(-1)
    kind = "nan" if torch.isnan(values).any() else ("inf" if (values > 0).any() else "-inf")
    if isinstance(row_ids, torch.Tensor):
        row_ids = row_ids.tolist()
    rows = list(row_ids) if row_ids is not None else "unknown"
    raise NonFiniteLossError(f"non-finite loss ({kind}) at step {step}; batch rows: {rows}")


class FiniteGuard:
    """`check_finite` without a device sync per step: `record` each step's loss, `check()` syncs once.

    It still names the first bad step and its rows, because it keeps each step's rows until checked. Call
    `check()` before logging or saving, so a checkpoint is never written after a NaN/inf step.
    """

    def __init__(self):
        self._pending: list[tuple[int, torch.Tensor, list]] = []

    def record(self, step: int, loss: torch.Tensor, row_ids) -> None:
        self._pending.append((step, loss.detach().reshape(()), row_ids))

    def check(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        finite = torch.isfinite(torch.stack([p[1] for p in pending]).float())
        if bool(finite.all()):
            return
        step, loss, rows = pending[int((~finite).nonzero()[0])]
        check_finite(loss, step, rows)
