"""A tqdm progress bar over optimizer steps: loss, tokens/s and ETA, on stderr."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """Progress over `total` optimizer steps, starting at `initial` (a resumed run's step).

    `update` takes numbers the caller already has on the host: pass `loss` only at logging intervals
    (after the one sync there), never a device tensor per step. Tokens/s is measured over the interval
    since the last postfix refresh (at most about twice per second) so it reflects current speed.
    """

    def __init__(self, total: int, *, initial: int = 0, enabled: bool = True, desc: str = "train"):
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, file=sys.stderr, desc=desc,
                        unit="step", dynamic_ncols=True, smoothing=0.1)
        self.loss: float | None = None
        self.tokens_per_s: float | None = None
        self._tokens = 0
        self._since = time.perf_counter()

    def update(self, step: int, loss: float | None = None, tokens: int = 0) -> None:
        """Move the bar to `step`; `tokens` are those processed since the previous call."""
        if loss is not None:
            self.loss = float(loss)
        self._tokens += tokens
        now = time.perf_counter()
        if now - self._since >= 0.5 and self._tokens:
            self.tokens_per_s = self._tokens / (now - self._since)
            self._tokens, self._since = 0, now
        self.bar.set_postfix(self._postfix(), refresh=False)
        self.bar.update(step - self.bar.n)

    def set_loss(self, loss: float) -> None:
        """Show `loss` (a host float, e.g. the mean of the last logging interval) from now on."""
        self.loss = float(loss)
        self.bar.set_postfix(self._postfix(), refresh=False)

    def write(self, message: str) -> None:
        """Print a line above the bar without breaking it."""
        self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()

    def _postfix(self) -> dict[str, str]:
        post = {}
        if self.loss is not None:
            post["loss"] = f"{self.loss:.4g}"
        if self.tokens_per_s is not None:
            post["tok/s"] = f"{self.tokens_per_s:,.0f}"
        return post

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
