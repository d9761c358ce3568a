"""make_optimizer, make_scheduler, clip_grad (alignlab/runtime/optim.py)."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.config import OptimConfig
from alignlab.runtime import clip_grad, make_optimizer, make_scheduler


def lrs(kind, steps, warmup=2, max_steps=10, lr=1.0):
    """Learning rate used by the optimizer step after `s` completed steps, for each s in `steps`."""
    opt = make_optimizer(torch.nn.Linear(2, 2), OptimConfig(lr=lr, scheduler=kind, warmup_steps=warmup,
                                                              max_steps=max_steps))
    sched = make_scheduler(opt, OptimConfig(lr=lr, scheduler=kind, warmup_steps=warmup, max_steps=max_steps))
    out = {}
    for s in range(max(steps) + 1):
        out[s] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    return [out[s] for s in steps]


def test_cosine_with_warmup():
    """W=2, S=10: warm-up 1/2, 2/2; then p=(s-2)/8: s=2 -> 1, s=6 -> cos mid = 0.5, s=9 -> p=7/8."""
    got = lrs("cosine", [0, 1, 2, 6, 9])
    want = [0.5, 1.0, 1.0, 0.5, 0.5 * (1 + math.cos(math.pi * 7 / 8))]
    assert got == pytest.approx(want)


def test_linear_and_constant():
    assert lrs("linear", [0, 1, 2, 6, 9]) == pytest.approx([0.5, 1.0, 1.0, 0.5, 1 / 8])
    assert lrs("constant", [0, 1, 2, 9]) == pytest.approx([0.5, 1.0, 1.0, 1.0])
    assert lrs("cosine", [0, 5], warmup=0) == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 2))])


def test_no_weight_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model[1].weight.requires_grad_(False)
    opt = make_optimizer(model, OptimConfig(weight_decay=0.1, adam_betas=(0.8, 0.9)))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and [p.shape for p in decay["params"]] == [(4, 4)]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 2  # 2 biases; frozen norm left out
    assert decay["betas"] == (0.8, 0.9)


def test_clip_grad_returns_preclip_norm_tensor():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    norm = clip_grad([p], 1.0)
    assert isinstance(norm, torch.Tensor) and norm.item() == pytest.approx(5.0)
    assert p.grad.tolist() == pytest.approx([0.6, 0.8], rel=1e-5)
    p.grad = torch.tensor([3.0, 4.0])
    assert clip_grad([p], 0.0).item() == pytest.approx(5.0) and p.grad.tolist() == [3.0, 4.0]
