"""The lab: synthetic tasks with gold rewards, tiny models, and seeded paper reproductions.

`resolve_names(cfg)` turns `lab:` names in a config into local paths, building them on first use:
`lab:tiny` -> the tiny base model directory (`base.tiny_model_path`), `lab:<dataset>` -> a JSONL file
(`datasets.dataset_path`), `lab:sentiment-gold` etc. -> a `python:` reward spec. Only the CLI and tests call it;
nothing else in the library imports `lab`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError
from alignlab.lab.base import BaseModelSpec, cache_root, tiny_model_path
from alignlab.lab.datasets import LAB_DATASETS, dataset_path
from alignlab.lab.rewards import LAB_REWARDS

PREFIX = "lab:"

LAB_MODELS: dict[str, Callable[..., Path]] = {"tiny": tiny_model_path}
"""Lab model name (without `lab:`) -> function(cache_dir=None) returning its local directory."""


def known_names() -> list[str]:
    """Every `lab:` name, models first."""
    return [PREFIX + n for n in (*LAB_MODELS, *LAB_DATASETS, *LAB_REWARDS)]


def resolve_name(value: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The local path for one `lab:` name (other strings are returned unchanged)."""
    if not value.startswith(PREFIX):
        return value
    name = value[len(PREFIX):]
    if name in LAB_MODELS:
        return str(LAB_MODELS[name](cache_dir))
    if name in LAB_DATASETS:
        return str(dataset_path(name, cache_dir))
    if name in LAB_REWARDS:
        return f"python:alignlab.lab.rewards:{LAB_REWARDS[name]}"
    raise ConfigError(f"unknown lab name {value!r}; known lab names: {', '.join(known_names())}")


def _resolve(value: Any, cache_dir) -> Any:
    """`value` with every `lab:` string inside it (dataclass fields, lists, tuples, dict values) resolved."""
    if isinstance(value, str):
        return resolve_name(value, cache_dir)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            old = getattr(value, f.name)
            new = _resolve(old, cache_dir)
            if new is not old:
                object.__setattr__(value, f.name, new)  # also works on frozen dataclasses
        return value
    if isinstance(value, list) or type(value) is tuple:
        items = [_resolve(v, cache_dir) for v in value]
        changed = any(a is not b for a, b in zip(items, value))
        return type(value)(items) if changed else value
    if isinstance(value, dict):
        for k, v in value.items():
            value[k] = _resolve(v, cache_dir)
        return value
    return value


def resolve_names(cfg: Any, *, cache_dir: str | os.PathLike | None = None) -> Any:
    """Replace, in place, every string field of the config dataclass `cfg` (searched recursively through
    nested dataclasses, lists and dicts) that starts with `lab:` by its local path: `lab:tiny` -> the
    tiny model directory, `lab:sentiment-sft` etc. -> a JSONL file. Returns `cfg`.

    Raises ConfigError naming the known names when a `lab:` name is unknown.
    """
    return _resolve(cfg, cache_dir)


__all__ = [
    "LAB_DATASETS", "LAB_MODELS", "LAB_REWARDS", "BaseModelSpec", "cache_root", "dataset_path", "known_names",
    "resolve_name", "resolve_names", "tiny_model_path",
]
