"""Small pieces every training loop needs: the accelerator and unwrapping."""

from __future__ import annotations


def make_accelerator(mixed_precision: str = "no"):
    """An `accelerate.Accelerator` for this process (CPU, one GPU, or one rank of a multi-process launch).

    accelerate keeps its state in a process-wide singleton; several runs in one process (the demo, a notebook,
    the tests) may ask for different precisions, so the precision part is reset while the distributed part
    (PartialState) is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)

    return Accelerator(mixed_precision=mixed_precision)


def unwrap(accelerator, model):
    """The plain model under DDP/FSDP/compile wrappers (peft wrappers stay)."""
    return accelerator.unwrap_model(model)
