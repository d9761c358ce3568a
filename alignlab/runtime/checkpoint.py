"""Atomic checkpoints for exact resume: `checkpoints/step-N/` = weights, tokenizer, optimizer, scheduler, RNG.

Layout of one checkpoint (the model files sit at the top so the directory loads with plain
`AutoModelForCausalLM.from_pretrained`; for a PEFT model it holds the adapter, which transformers loads on
top of the base model named in `adapter_config.json`):

    config.json  model.safetensors | adapter_model.safetensors  tokenizer files
    optimizer.pt  scheduler.pt  rng.pt  state.json   <- written last: the "complete" marker

Writing goes to `checkpoints/.tmp-step-N/`, every file is fsynced, then the directory is renamed to
`step-N`. A crash at any point leaves the previous checkpoints untouched; `latest_checkpoint` ignores and
removes leftovers. Only the main process should call `save_checkpoint`; RNG state is that process's.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from alignlab.runtime.seed import get_rng_state, set_rng_state

logger = logging.getLogger("alignlab")

MARKER = "state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def save_checkpoint(run_dir: Any, step: int, *, model: torch.nn.Module, tokenizer: Any = None,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    state: dict | None = None, keep: int = 2) -> Path:
    """Write `checkpoints/step-{step}` atomically and return its path.

    Args:
        run_dir: a `RunDir` or a run directory path (checkpoints go to `<run_dir>/checkpoints`).
        state: JSON-serializable resume state from the recipe (data position, epoch, ...); `step` is added.
        keep: newest checkpoints kept after this one is written; older ones are deleted (< 1 keeps all).
            Checkpoints with a step above `step` are from an abandoned future of this run (we resumed from
            an earlier one) and are deleted too, so the latest checkpoint is always the one just written.
    """
    root = _checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    _recover(root)
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _write_model(_unwrap(model), tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(get_rng_state(), tmp / "rng.pt")
        _fsync_tree(tmp)
        _write_marker(tmp, {"step": step, **(state or {})})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _install(tmp, final)
    _rotate(root, step, keep)
    logger.info("saved checkpoint %s", final)
    return final


def save_step(run_dir: Any, step: int, *, guard: Any, meter: Any, state: dict, write: bool, keep: int,
              prepare: Sequence[Callable[[], dict | None]] = (), **parts: Any) -> None:
    """A training loop's checkpoint at `step`: confirm every step since the last check was finite (nothing is
    written after a non-finite step), run the `prepare` callables (every process; each may return entries for
    `state`, e.g. PPO's critic checkpoint, which must precede the policy's, or the file of a moving reference's
    weights), store the meter's open logging interval in `state` (for an exact resume), and, on the process
    that writes (`write`), `save_checkpoint(run_dir, step, state=state, keep=keep, **parts)` with `parts` =
    model, tokenizer, optimizer, scheduler."""
    guard.check()
    for fn in prepare:
        state.update(fn() or {})
    state["meter"] = meter.state_dict()
    if write:
        save_checkpoint(run_dir, step, state=state, keep=keep, **parts)


def latest_checkpoint(run_dir_or_path: Any) -> Path | None:
    """The complete checkpoint with the highest step, or None.

    Accepts a `RunDir`, a run directory, a `checkpoints/` directory, or a checkpoint itself (returned as is
    if complete). Leftovers of interrupted saves (`.tmp-*`) are removed first.
    """
    path = Path(getattr(run_dir_or_path, "checkpoints_dir", run_dir_or_path))
    if (path / MARKER).is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not root.is_dir():
        return None
    _recover(root)
    found = _complete(root)
    return found[-1][1] if found else None


def load_checkpoint(path: str | Path, *, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    restore_rng: bool = True) -> dict:
    """Restore weights, optimizer, scheduler and RNG from `path` in place; return the saved state dict.

    Build `optimizer` and `scheduler` exactly as for a fresh run (same param groups), then call this.
    """
    path = Path(path)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER})")
    _load_weights(_unwrap(model), path)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if restore_rng:
        set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    state = json.loads((path / MARKER).read_text(encoding="utf-8"))
    logger.info("resumed from checkpoint %s (step %d)", path, state["step"])
    return state


# ---------------------------------------------------------------- model weights


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP/DataParallel and torch.compile wrappers."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


def _is_peft(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _write_model(model: torch.nn.Module, out: Path) -> None:
    """Safetensors weights (or the PEFT adapter: the only trained weights) plus config."""
    model.save_pretrained(out)  # transformers >= 5 and peft always write safetensors
    if not any(out.glob("*.safetensors")):
        raise RuntimeError(f"save_pretrained wrote no safetensors file in {out}")


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    if _is_peft(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
        if result.unexpected_keys:
            raise RuntimeError(f"{path}: adapter keys not in the model: {result.unexpected_keys[:5]}")
        return
    current = model.state_dict()
    loaded: set[str] = set()
    for file in sorted(path.glob("*.safetensors")):
        tensors = load_file(file)
        if not set(tensors) <= set(current):
            return _load_via_transformers(model, path)  # keys renamed on save (conversion mapping)
        model.load_state_dict(tensors, strict=False)
        loaded.update(tensors)
    # Tied weights (e.g. lm_head = embed_tokens) are saved once; they are restored through their twin.
    loaded_ptrs = {current[k].data_ptr() for k in loaded}
    missing = [k for k in current if k not in loaded and current[k].data_ptr() not in loaded_ptrs]
    if missing:
        raise RuntimeError(f"{path}: checkpoint lacks weights for {missing[:5]}")


def _load_via_transformers(model: torch.nn.Module, path: Path) -> None:
    """Slow path for models whose saved key names differ from their module names: transformers maps them."""
    dtype = next(model.parameters()).dtype
    fresh = type(model).from_pretrained(path, dtype=dtype)
    model.load_state_dict(fresh.state_dict())


# ---------------------------------------------------------------- files


def _checkpoints_dir(run_dir: Any) -> Path:
    return Path(getattr(run_dir, "checkpoints_dir", None) or Path(run_dir) / "checkpoints")


def _complete(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoints, sorted by step."""
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / MARKER).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def _write_marker(directory: Path, state: dict) -> None:
    with open(directory / MARKER, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(directory)


def _install(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing `final` is moved aside first and deleted only afterwards."""
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


def _recover(root: Path) -> None:
    """Finish or undo what an interrupted save left: drop `.tmp-*`, put back a `.old-step-N` that lost its
    replacement."""
    for child in list(root.iterdir()):
        if child.name.startswith(".tmp-"):
            shutil.rmtree(child, ignore_errors=True)
        elif child.name.startswith(".old-"):
            final = root / child.name[len(".old-"):]
            if (final / MARKER).is_file():
                shutil.rmtree(child, ignore_errors=True)
            else:
                if final.exists():
                    shutil.rmtree(final)
                os.rename(child, final)


def _rotate(root: Path, step: int, keep: int) -> None:
    complete = _complete(root)
    stale = [p for s, p in complete if s > step]
    older = [p for s, p in complete if s <= step]
    doomed = stale + (older[:-keep] if keep >= 1 else [])
    for p in doomed:
        logger.info("removing checkpoint %s", p)
        shutil.rmtree(p, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    for dirpath, _, files in os.walk(directory):
        for name in files:
            _fsync_and_close(os.open(os.path.join(dirpath, name), os.O_RDONLY))
        _fsync_dir(Path(dirpath))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # directories cannot be opened on Windows; rename durability is best effort there
        return
    _fsync_and_close(fd)


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
