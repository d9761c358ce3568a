"""Seeding and RNG state capture, so a resumed run draws the same random numbers as an uninterrupted one.

`get_rng_state()` returns only plain Python values and tensors, so it round-trips through
`torch.save` / `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and torch (CPU and every CUDA device).

    Deterministic kernels (`torch.use_deterministic_algorithms`) are not switched on: on CPU the ops we
    use are already deterministic, and on GPU the cost is the user's call.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def get_rng_state() -> dict:
    """Snapshot of the Python, NumPy, torch CPU (and CUDA, when available) generators."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        # NumPy arrays are not allowed by torch.load(weights_only=True); store the key as a tensor.
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore generators from `get_rng_state()` output; CUDA state only when the device count matches."""
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _as_tuple(value):
    """random.setstate wants nested tuples; a serializer may have turned them into lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value
