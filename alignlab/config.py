"""Config blocks shared by every command, and loading: YAML file, then dotted CLI overrides.

Dataclasses are the single source of truth. Each field's docstring becomes its `--help` line (tyro).
`alignlab sft --config run.yaml --optim.lr 1e-4` loads `run.yaml` into the command's dataclass (unknown
keys and wrongly typed values are errors naming the key), then applies the overrides on top.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro
import yaml

from alignlab.errors import ConfigError


@dataclass
class ModelConfig:
    """Which model to train and how to hold it."""

    path: Annotated[str, tyro.conf.arg(aliases=("--model",))] = "lab:tiny"
    """Local Hugging Face model directory, hub name, or `lab:tiny` (the built-in lab model)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of the weights as loaded."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast the forward pass (bf16 uses AMX on recent CPUs, fp16 is GPU only); master weights stay in `dtype`."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub checkpoint. Off unless you trust its author."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    lora_r: int = 0
    """LoRA rank; 0 trains all weights."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    lora_target_modules: str = "all-linear"
    """Comma-separated module names for LoRA, or `all-linear`."""

    def __post_init__(self):
        if self.lora_r < 0:
            raise ConfigError(f"model.lora_r must be >= 0, got {self.lora_r}")


@dataclass
class DataConfig:
    """Where the examples come from and how they become token batches."""

    dataset: Annotated[str, tyro.conf.arg(aliases=("--dataset",))] = "lab:sentiment-sft"
    """A .jsonl/.json/.parquet/.csv file, a local dataset directory, a hub name, or a `lab:` dataset."""
    split: str = "train"
    """Split to read when the dataset has several."""
    subset: str | None = None
    """Hub config name (e.g. `main` for gsm8k)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Map our field names to yours, e.g. `--data.columns prompt question completion answer`."""
    max_length: int = 512
    """Longest tokenized example (prompt + completion); longer ones are truncated, then counted."""
    max_prompt_length: int | None = None
    """Longest prompt; the prompt's end is kept. Default: no separate prompt limit."""
    eval_fraction: float = 0.05
    """Share of rows held out for eval loss (0 disables eval)."""
    packing: bool = False
    """Concatenate examples into rows of `max_length` tokens, attention kept within each example."""
    max_rows: int | None = None
    """Read at most this many rows (handy for quick runs)."""

    def __post_init__(self):
        if self.max_length < 2:
            raise ConfigError(f"data.max_length must be >= 2, got {self.max_length}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")


@dataclass
class OptimConfig:
    """Optimizer, schedule and batch size."""

    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    scheduler: Literal["constant", "linear", "cosine"] = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    batch_size: int = 8
    """Examples per optimizer step and process; `grad_accum` splits them into micro-batches (less memory)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    max_steps: Annotated[int, tyro.conf.arg(aliases=("--max-steps",))] = 100
    """Optimizer steps to run."""

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "max_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"optim.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")


@dataclass
class LogConfig:
    """Run directory, logging, evaluation and checkpoint cadence."""

    output_dir: Annotated[str, tyro.conf.arg(aliases=("--output-dir",))] = "runs/latest"
    """Run directory: config.yaml, metrics.jsonl, TensorBoard events, checkpoints, final model."""
    log_every: int = 10
    """Steps between metric lines (also the only place the loop syncs with the device)."""
    eval_every: int = 50
    """Steps between held-out evaluations (0 = only at the end)."""
    save_every: int = 50
    """Steps between checkpoints (0 = only at the end)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept; older ones are deleted (0 keeps all)."""
    tensorboard: bool = True
    """Write TensorBoard events to the run directory."""
    wandb: bool = False
    """Also log to Weights & Biases (needs the `wandb` extra)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self):
        for name in ("log_every", "eval_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ConfigError(f"log.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class RolloutConfig:
    """How an online-RL step samples: prompts per step, completions per prompt, sampling settings."""

    prompts_per_step: int = 8
    """Prompts drawn per step and process (P); the step's batch is B = P x group_size completions."""
    group_size: int = 4
    """Completions sampled per prompt (G); group-relative estimators need at least 2."""
    max_new_tokens: int = 64
    """Longest completion in tokens; a completion cut here is `finish_reason: length`."""
    temperature: float = 1.0
    """Sampling temperature (> 0); training log-probs use logits / temperature, the sampler's distribution."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]; 1 = off."""
    top_k: int = 0
    """Sample only among the k most likely tokens (0 = off)."""
    backend: Literal["auto", "native", "hf", "vllm"] = "auto"
    """Generation engine: `native` (alignlab's decode loop), `hf` (transformers generate), `vllm` (GPU, optional),
    `auto` (native when the model supports it, else hf); see docs/rollout.md."""
    dtype: Literal["auto", "bf16"] = "auto"
    """Rollout precision: `auto` = the model's dtype; `bf16` = sample from bfloat16 copies of the weights (made per
    step; ~2x faster decode on CPU, AMX); training stays in the model's dtype, `pg.tis_cap` corrects the mismatch."""
    max_prompt_length: int = 256
    """Longest prompt in tokens; longer prompts keep their end (and are counted in the log)."""
    sample_every: int = 10
    """Write the step's prompts, completions and scores to `samples/step-N.jsonl` every N steps (0 = never)."""

    def __post_init__(self):
        for name in ("prompts_per_step", "group_size", "max_new_tokens", "max_prompt_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"rollout.{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ConfigError(f"rollout.temperature must be > 0 (the policy is trained at this temperature), "
                              f"got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"rollout.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"rollout.top_k must be >= 0, got {self.top_k}")
        if self.sample_every < 0:
            raise ConfigError(f"rollout.sample_every must be >= 0, got {self.sample_every}")
        if self.dtype not in ("auto", "bf16"):
            raise ConfigError(f"rollout.dtype must be auto or bf16, got {self.dtype!r}")


# ---------------------------------------------------------------- loading


def _check_value(value: Any, hint: Any, key: str, source: str) -> Any:
    """Return `value` converted to `hint` where YAML is looser than Python (int for float, list for tuple)."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _check_value(value, typing.get_args(hint)[0], key, source)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # PyYAML (YAML 1.1) reads `1e-3` as a string; the user did write a number
            return float(value)
        except ValueError:
            pass
    if origin is tuple and isinstance(value, list):
        value = tuple(value)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            try:
                return _check_value(value, arm, key, source)
            except ConfigError:
                continue
    import typeguard

    try:
        typeguard.check_type(value, hint)
    except typeguard.TypeCheckError:
        raise ConfigError(f"{source}: key '{key}' expects {_type_name(hint)}, got {value!r}") from None
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def from_dict(cls: type, data: dict, *, source: str = "config", prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types raise ConfigError naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix or 'top level'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{full}' (valid keys here: {', '.join(sorted(names))})")
        hint = hints[key]
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
        if dataclasses.is_dataclass(base):
            kwargs[key] = from_dict(base, value, source=source, prefix=f"{full}.")
        else:
            kwargs[key] = _check_value(value, hint, full, source)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_yaml(cls: type, path: str | Path) -> Any:
    """Read a YAML config file into dataclass `cls`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return from_dict(cls, data, source=str(path))


def parse(cls: type, args: list[str], *, prog: str | None = None, description: str | None = None) -> Any:
    """Parse `[--config FILE] [--dotted.key value ...]` into a `cls` instance."""
    args = list(args)
    default = None
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise ConfigError("--config needs a file path")
        default = load_yaml(cls, args[i + 1])
        del args[i : i + 2]
    return tyro.cli(cls, args=args, default=default, prog=prog, description=description,
                    config=(tyro.conf.FlagConversionOff,))


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config (tuples become lists) for YAML and logging."""

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
