"""seed_everything and RNG state capture (alignlab/runtime/seed.py)."""

from __future__ import annotations

import random

import numpy as np
import torch

from alignlab.runtime import get_rng_state, seed_everything, set_rng_state


def draw():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist(), torch.randn(2).tolist()


def test_seed_everything_repeats():
    seed_everything(7)
    a = draw()
    seed_everything(7)
    assert draw() == a
    seed_everything(8)
    assert draw() != a


def test_rng_state_round_trips_through_torch_save(tmp_path):
    seed_everything(0)
    draw()
    np.random.randn()  # leave numpy with a cached gaussian, part of its state
    state = get_rng_state()
    expected = draw()
    torch.save(state, tmp_path / "rng.pt")
    draw()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draw() == expected
