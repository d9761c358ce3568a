"""Small pieces every training loop needs: the accelerator and unwrapping."""

from __future__ import annotations


def make_accelerator(mixed_precision: str = "no"):
    """An `accelerate.Accelerator` for this process (CPU, one GPU, or one rank of a multi-process launch)."""
    from accelerate import Accelerator

    return Accelerator(mixed_precision=mixed_precision)


def unwrap(accelerator, model):
    """The plain model under DDP/FSDP/compile wrappers (peft wrappers stay)."""
    return accelerator.unwrap_model(model)
