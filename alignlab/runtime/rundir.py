"""The run directory: `run.log`, `config.yaml`, `metrics.jsonl`, TensorBoard events, `checkpoints/`.

Creating a `RunDir` makes the directory and `run.log` and nothing else, so a run that fails on bad input
leaves only its log. Everything else appears when the recipe first needs it:

    run = RunDir("runs/sft")            # run.log
    run.save_config(cfg)                # config.yaml (+ printed)
    run.log(10, {"train/loss": loss})   # metrics.jsonl, tensorboard/events.*
    run.close()

Resuming from step N: call `run.truncate_metrics(N)` before logging; metric lines (and TensorBoard events)
past step N are dropped so the final files equal those of an uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

from alignlab.config import to_dict, to_yaml
from alignlab.errors import ConfigError

logger = logging.getLogger("alignlab")

LOG_FILE, CONFIG_FILE, METRICS_FILE = "run.log", "config.yaml", "metrics.jsonl"
TENSORBOARD_DIR, CHECKPOINTS_DIR = "tensorboard", "checkpoints"


class RunDir:
    """One run's output directory and its metric sinks (jsonl always; TensorBoard and wandb optional)."""

    def __init__(self, path: str | Path, *, tensorboard: bool = True, wandb: bool = False,
                 wandb_project: str = "alignlab", enabled: bool = True):
        if wandb and importlib.util.find_spec("wandb") is None:
            raise ConfigError("log.wandb is on but wandb is not installed: pip install 'alignlab[wandb]'")
        self.path = Path(path)
        self.enabled = enabled  # False on the non-main processes of a multi-process run: they write nothing
        self._writer = None
        self._wandb_run = None
        self._handler = None
        if not enabled:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self.use_tensorboard, self.use_wandb, self.wandb_project = tensorboard, wandb, wandb_project
        self._purge_step: int | None = None
        self._config: dict | None = None
        self._handler = logging.FileHandler(self.path / LOG_FILE, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(self._handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)

    @property
    def checkpoints_dir(self) -> Path:
        """`<run>/checkpoints`; created by the first `save_checkpoint`."""
        return self.path / CHECKPOINTS_DIR

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def save_config(self, cfg: Any, *, echo: bool = True) -> Path:
        """Write the resolved config to `config.yaml` and print it to stdout when `echo`."""
        text = to_yaml(cfg)
        out = self.path / CONFIG_FILE
        if not self.enabled:
            return out
        out.write_text(text, encoding="utf-8")
        self._config = to_dict(cfg)
        logger.info("resolved config saved to %s", out)
        if echo:
            print(text, end="", file=sys.stdout, flush=True)
        return out

    def truncate_metrics(self, step: int) -> None:
        """Drop metric lines with step > `step` (left by an interrupted run) and purge later TB events."""
        self._purge_step = step + 1
        if not self.enabled or not self.metrics_path.exists():
            return
        kept = [line for line in self.metrics_path.read_text(encoding="utf-8").splitlines(keepends=True)
                if line.strip() and json.loads(line)["step"] <= step]
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, self.metrics_path)
        logger.info("resuming at step %d: kept %d metric lines", step, len(kept))

    def log(self, step: int, metrics: dict[str, float | int | torch.Tensor]) -> dict[str, float | int]:
        """Append `{"step": step, **metrics}` to metrics.jsonl and the enabled sinks; return the plain values.

        A "step" key in `metrics` is ignored (the argument wins).
        Tensors are converted with one batched transfer per device (one sync), so call this only at
        logging intervals.
        """
        values = _to_floats({k: v for k, v in metrics.items() if k != "step"})
        if not self.enabled:
            return values
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.use_tensorboard:
            writer = self._tensorboard()
            for key, value in values.items():
                writer.add_scalar(key, value, global_step=step)
        if self.use_wandb:
            self._wandb().log(values, step=step)
        return values

    def metrics(self) -> list[dict]:
        """All metric lines written so far, as dicts."""
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def close(self) -> None:
        """Flush and close every sink and detach the log file handler. Safe to call twice."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
        if self._handler is not None:
            logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tensorboard(self):
        if self._writer is None:
            # Imported lazily: tensorboard is slow to import and a run may never log.
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.path / TENSORBOARD_DIR), purge_step=self._purge_step,
                                         flush_secs=30)
        return self._writer

    def _wandb(self):
        if self._wandb_run is None:
            import wandb

            self._wandb_run = wandb.init(project=self.wandb_project, name=self.path.name, dir=str(self.path),
                                         config=self._config)
        return self._wandb_run


def _to_floats(metrics: dict[str, float | int | torch.Tensor]) -> dict[str, float | int]:
    """Tensors become floats (per device, one `stack().tolist()`: one sync); numbers pass through."""
    out: dict[str, float | int] = {}
    by_device: dict[torch.device, list[str]] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"metric '{key}' must be a scalar, got shape {tuple(value.shape)}")
            by_device.setdefault(value.device, []).append(key)
        elif isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, int | float):
            out[key] = value
        else:
            raise TypeError(f"metric '{key}' must be a number or a scalar tensor, got {type(value).__name__}")
    for keys in by_device.values():
        stacked = torch.stack([metrics[k].detach().reshape(()).float() for k in keys]).tolist()
        out.update(zip(keys, stacked))
    return {k: out[k] for k in metrics}  # keep the caller's key order


def resume_point(run: RunDir, resume: bool) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run.

    A fresh run refuses a directory that already holds one (checkpoints or metrics), so nothing is appended to
    or overwritten; `resume` without a checkpoint starts fresh and says so.
    """
    from alignlab.runtime.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run.path) if run.path.exists() else None
    if resume:
        if ckpt is None:
            logger.warning("resume requested but %s has no complete checkpoint: starting from step 0", run.path)
            run.truncate_metrics(0)
        return ckpt
    if ckpt is not None or run.metrics_path.exists():
        raise ConfigError(f"{run.path} already holds a run (checkpoints or metrics.jsonl): pass --resume True to "
                          "continue it, or choose another --output-dir")
    return None
