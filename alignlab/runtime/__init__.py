"""alignlab.runtime: seeding, run directory, metrics, progress, checkpoints/resume, signals, optimizer.

Public API (see each module's docstring):
    seed_everything, get_rng_state, set_rng_state                  seed.py
    RunDir                                                         rundir.py
    save_checkpoint, save_step, load_checkpoint, latest_checkpoint checkpoint.py
    StopSignal                                                     signals.py
    check_finite, FiniteGuard                                      finite.py
    make_accelerator, unwrap, to_device, micro_batches, batch_rows,
    batch_tokens, due, Meter, process_sum                                      loop.py
    Progress                                                       progress.py
    make_optimizer, make_scheduler, clip_grad, lr_factor           optim.py
"""

from alignlab.runtime.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_step
from alignlab.runtime.finite import FiniteGuard, check_finite
from alignlab.runtime.loop import (
    Meter,
    batch_rows,
    batch_tokens,
    due,
    make_accelerator,
    micro_batches,
    process_sum,
    to_device,
    unwrap,
)
from alignlab.runtime.optim import clip_grad, lr_factor, make_optimizer, make_scheduler
from alignlab.runtime.progress import Progress
from alignlab.runtime.rundir import RunDir, resume_point
from alignlab.runtime.seed import get_rng_state, seed_everything, set_rng_state
from alignlab.runtime.signals import StopSignal

__all__ = [
    "FiniteGuard", "Meter", "Progress", "RunDir", "StopSignal", "check_finite", "clip_grad", "get_rng_state",
    "latest_checkpoint", "load_checkpoint", "lr_factor", "make_accelerator", "make_optimizer", "make_scheduler",
    "save_checkpoint", "save_step", "seed_everything", "set_rng_state", "unwrap", "batch_rows", "batch_tokens", "due",
    "micro_batches", "process_sum", "resume_point", "to_device",
]
