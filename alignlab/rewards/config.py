"""Which reward a run optimizes, as config: `--reward.sources rm:runs/rm python:my_rewards.py:fn`.

    cfg = RewardSourceConfig(sources=["python:my_rewards:accuracy"])
    source = build_reward(cfg)              # a RewardSource: .score(prompts, completions, **columns) -> (B,)

Source specs:
  python:MODULE:FUNCTION or python:FILE.py:FUNCTION   a plain function (see `FunctionReward`)
  (more kinds are registered in `SPEC_KINDS` by the modules that implement them)
`lab:` names (e.g. `lab:sentiment-gold`) are turned into `python:` specs by the CLI before this runs.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alignlab.errors import ConfigError
from alignlab.rewards.base import FunctionReward, RewardSource


@dataclass
class RewardSourceConfig:
    """The reward an online run optimizes: one source or several combined."""

    sources: list[str] = field(default_factory=lambda: ["lab:sentiment-gold"])
    """Reward source specs: `python:MODULE:FN`, `python:FILE.py:FN`, or a `lab:` reward name."""
    weights: list[float] = field(default_factory=list)
    """Weight of each source in a weighted sum (default: all 1)."""


def load_function(spec: str) -> Callable:
    """`MODULE:FN` or `FILE.py:FN` -> the function; ConfigError naming the spec when it cannot be found."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise ConfigError(f"reward source 'python:{spec}': expected python:MODULE:FUNCTION or python:FILE.py:FUNCTION")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ConfigError(f"reward source 'python:{spec}': file not found: {path}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ImportError as e:
        raise ConfigError(f"reward source 'python:{spec}': cannot import {target}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"reward source 'python:{spec}': {target} has no function {name!r}")
    return fn


SPEC_KINDS: dict[str, Callable[[str, RewardSourceConfig], RewardSource]] = {
    "python": lambda rest, cfg: FunctionReward(load_function(rest), name=rest),
}
"""Spec prefix -> factory(rest of the spec, config) returning a RewardSource."""


def build_source(spec: str, cfg: RewardSourceConfig) -> RewardSource:
    kind, _, rest = spec.partition(":")
    if kind not in SPEC_KINDS:
        raise ConfigError(f"unknown reward source {spec!r}; expected one of: "
                          + ", ".join(f"{k}:..." for k in SPEC_KINDS))
    return SPEC_KINDS[kind](rest, cfg)


def build_reward(cfg: RewardSourceConfig) -> RewardSource:
    """The configured reward source (several sources -> their weighted sum)."""
    if not cfg.sources:
        raise ConfigError("reward.sources is empty: name at least one reward source")
    if cfg.weights and len(cfg.weights) != len(cfg.sources):
        raise ConfigError(f"reward.weights has {len(cfg.weights)} values for {len(cfg.sources)} sources")
    sources = [build_source(s, cfg) for s in cfg.sources]
    if len(sources) == 1 and not cfg.weights:
        return sources[0]
    from alignlab.rewards.combine import WeightedSum

    return WeightedSum(sources, cfg.weights or [1.0] * len(sources))


