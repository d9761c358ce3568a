"""AdamW, the learning-rate schedule, and gradient clipping, built from `OptimConfig`.

Schedule (s = optimizer steps already taken, W = warmup_steps, S = max_steps):
    warm-up   lr(s) = peak * (s + 1) / W                for s < W  (the first step already moves)
    after     p = (s - W) / (S - W),  lr(s) = peak * f(p) with
              constant: 1      linear: 1 - p      cosine: 0.5 * (1 + cos(pi * p))
Departure from transformers' `get_*_schedule_with_warmup`: their warm-up starts at lr 0, so the first
optimizer step does nothing; here it starts at peak / W.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR

from alignlab.config import OptimConfig


def make_optimizer(params: torch.nn.Module | Iterable[torch.nn.Parameter],
                   cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; 1-D tensors (biases, norm scales) get no weight decay.

    Uses the fused kernel where the device and dtypes allow it (CPU and CUDA in recent torch), else the
    foreach implementation.
    """
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": g, "weight_decay": wd}
              for g, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)) if g]
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.adam_betas))
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # fused unsupported for this device/dtype
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, kind: str) -> float:
    """Multiplier of the peak learning rate after `step` optimizer steps (see the module docstring)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(max_steps - warmup_steps, 1), 1.0)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown scheduler '{kind}' (choose constant, linear or cosine)")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> LambdaLR:
    """Warm-up, then constant/linear/cosine decay to `cfg.max_steps`; `.step()` after each optimizer step."""
    lr_factor(0, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, kind=cfg.scheduler)  # validate name
    fn = partial(lr_factor, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, kind=cfg.scheduler)
    return LambdaLR(optimizer, fn)


def clip_grad(params: torch.nn.Module | Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the global L2 gradient norm to `max_norm` (<= 0: measure only); return the pre-clip norm tensor.

    Never syncs with the device: the norm stays a tensor until the caller logs it.
    """
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    return torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
