"""Small pieces every training loop needs: accelerator, batches on the device, cadence, interval metrics."""

from __future__ import annotations

import time

import torch


def make_accelerator(mixed_precision: str = "no"):
    """An `accelerate.Accelerator` for this process (CPU, one GPU, or one rank of a multi-process launch).

    accelerate keeps its state in a process-wide singleton; several runs in one process (the demo, a notebook,
    the tests) may ask for different precisions, so the precision part is reset while the distributed part
    (PartialState) is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from alignlab.errors import ConfigError

    gpu = torch.cuda.is_available()
    if mixed_precision == "fp16" and not gpu:
        raise ConfigError("model.mixed_precision fp16 needs a GPU; on CPU use bf16 (AMX makes it fast)")
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)

    # cpu=True on a CPU-only machine: a torchrun/accelerate launch then runs real DDP over gloo
    return Accelerator(mixed_precision=mixed_precision, cpu=not gpu)


def unwrap(accelerator, model):
    """The plain model under DDP/FSDP/compile wrappers (peft wrappers stay)."""
    return accelerator.unwrap_model(model)


def process_sum(accelerator):
    """A function summing a tensor over all processes (accelerate's all-reduce; the result on the tensor's own
    device), or None in a single process: e.g. the `reduce` of `advantages.reinforce_pp_advantages`."""
    if accelerator.num_processes == 1:
        return None
    return lambda t: accelerator.reduce(t.to(accelerator.device), reduction="sum").to(t.device)


def to_device(batch: dict, device) -> dict:
    """The batch's tensors on `device` (bookkeeping lists such as `seq_lens` are dropped)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}


def micro_batches(batch: dict, n: int) -> list[dict]:
    """Split a batch into `n` micro-batches along dim 0 (row-wise tensors only)."""
    if n == 1:
        return [batch]
    keys = [k for k, v in batch.items() if torch.is_tensor(v) and v.dim() >= 1 and k != "row_ids"]
    chunks = {k: batch[k].tensor_split(n) for k in keys}
    return [{k: chunks[k][i] for k in keys} for i in range(n) if chunks[keys[0]][i].shape[0] > 0]


def batch_rows(batch: dict) -> list[int]:
    """The dataset rows in a (padded or packed) batch, for error messages."""
    if "packed_row_ids" in batch:
        return [r for rows in batch["packed_row_ids"] for r in rows]
    return batch["row_ids"].tolist()


def batch_tokens(batch: dict) -> int:
    """Real (non-padding) tokens in a host-side batch."""
    if "seq_lens" in batch:
        return sum(sum(lens) for lens in batch["seq_lens"])
    return int(batch["attention_mask"].sum())


def due(step: int, every: int, done: bool = False) -> bool:
    """True every `every` steps (never when `every` is 0) and at the last step."""
    return done or (every > 0 and step % every == 0)


class Meter:
    """Sums of per-step metrics over one logging interval, kept on the device: `add` never syncs, `flush`
    syncs once. Its state goes into checkpoints so a resumed run logs the same interval means."""

    def __init__(self, device, state: dict | None = None):
        self.device = device
        state = state or {}
        self.sums = {k: torch.tensor(v, device=device) for k, v in state.get("sums", {}).items()}
        self.steps = state.get("steps", 0)
        self.tokens, self.start = 0, time.perf_counter()

    def add(self, metrics: dict[str, torch.Tensor], tokens: int = 0) -> None:
        """Add one step's scalar metrics (detached here)."""
        for k, v in metrics.items():
            v = v.detach().float().reshape(())
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.steps += 1
        self.tokens += tokens

    def flush(self) -> dict[str, float]:
        """Interval means (one device sync) plus tokens/s; resets the interval."""
        keys = sorted(self.sums)
        values = torch.stack([self.sums[k] for k in keys]).cpu().tolist() if keys else []
        out = {k: v / max(self.steps, 1) for k, v in zip(keys, values)}
        out["tokens_per_s"] = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        self.sums, self.steps, self.tokens, self.start = {}, 0, 0, time.perf_counter()
        return out

    def state_dict(self) -> dict:
        return {"sums": {k: v.item() for k, v in self.sums.items()}, "steps": self.steps}
