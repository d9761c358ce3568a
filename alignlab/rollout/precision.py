"""Rollout precision: sample from a bfloat16 copy of the policy's weights, train the float32 weights.

On CPU, decoding a model too big for the caches is bound by reading its weights from memory each token step;
bfloat16 halves those bytes (and runs the products on AMX where the CPU has it), docs/rollout.md "Precision". This
is what vLLM-based RL trainers do (sample in bf16, train in fp32); the sampler/trainer log-prob mismatch it
introduces is what truncated importance sampling corrects (`losses.pg.truncated_is_weights`, `pg.tis_cap`).

`rollout_weights(model, "bf16")` swaps every floating-point parameter's storage for a bfloat16 copy for the
duration of a `generate` call and puts the original tensors back on exit (exception or not), so the trainer's
parameters, their optimizer state and their values are untouched (bit for bit), and the copy is rebuilt from the
current weights on each call: updates between calls are seen. Buffers (e.g. rotary `inv_freq`) keep their dtype,
as when transformers loads a model in bfloat16.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from alignlab.errors import ConfigError

DTYPES = {"auto": None, "bf16": torch.bfloat16}


def rollout_dtype(name: str) -> torch.dtype | None:
    """The torch dtype a rollout precision name asks for (None for `auto`: the model's own dtype)."""
    if name not in DTYPES:
        raise ConfigError(f"unknown rollout dtype {name!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


@contextlib.contextmanager
def rollout_weights(model: nn.Module, name: str):
    """Within the block, `model`'s floating-point parameters hold copies in the dtype `name` asks for ("auto":
    nothing changes); the original tensors are restored on exit. Tied parameters stay tied (one copy each)."""
    dtype = rollout_dtype(name)
    saved: dict[int, tuple[nn.Parameter, Tensor]] = {}
    try:
        if dtype is not None:
            with torch.no_grad():
                for p in model.parameters():
                    if id(p) not in saved and p.is_floating_point() and p.dtype != dtype:
                        saved[id(p)] = (p, p.data)
                        p.data = p.data.to(dtype)
        yield
    finally:
        for p, data in saved.values():
            p.data = data
