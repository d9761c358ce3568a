"""Which reward a run optimizes, as config: `--reward.sources rm:runs/rm python:my_rewards.py:fn`.

    cfg = RewardSourceConfig(sources=["python:my_rewards:accuracy"])
    source = build_reward(cfg)              # a RewardSource: .score(prompts, completions, **columns) -> (B,)

Source specs (`SPEC_KINDS`):
  python:MODULE:FUNCTION or python:FILE.py:FUNCTION   a plain function (`FunctionReward`)
  rm:PATH                                              a saved reward model (`RewardModelSource`)
  math or math:COLUMN                                  final-answer check against a column (`MathReward`)
  code or code:COLUMN                                  run the program against a tests column (`CodeReward`)
  rules:FILE.yaml                                      rule-based reward (`RuleReward.from_yaml`)
`lab:` names (e.g. `lab:sentiment-gold`) are turned into `python:` specs by the CLI before this runs.
Several sources are summed with `weights` (combine="sum") or combined as an ensemble (combine="mean",
"min", "mean_minus_std"); for one `rm:` ensemble model, `combine` picks how its heads are combined.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alignlab.errors import ConfigError
from alignlab.rewards.base import FunctionReward, RewardSource


@dataclass
class RewardSourceConfig:
    """The reward an online run optimizes: one source or several combined."""

    sources: list[str] = field(default_factory=lambda: ["lab:sentiment-gold"])
    """Reward source specs: `python:MODULE:FN`, `python:FILE.py:FN`, `rm:PATH`, `math[:COLUMN]`, `code[:COLUMN]`,
    `rules:FILE.yaml`, or a `lab:` reward name."""
    weights: list[float] = field(default_factory=list)
    """Weight of each source in a weighted sum (default: all 1); only with combine="sum"."""
    combine: Literal["sum", "mean", "min", "mean_minus_std"] = "sum"
    """Several sources as one: weighted sum, or ensemble mean / min / mean - lam * std (also an rm: model's heads)."""
    lam: float = 1.0
    """Weight of the std in combine="mean_minus_std"."""
    whiten: bool = True
    """rm: sources: apply the normalization stored with the reward model (Llama 2 whitening)."""
    batch_size: int = 32
    """rm: sources: sequences per forward pass."""
    max_length: int = 1024
    """rm: sources: longest prompt + completion in tokens (the prompt keeps at most half)."""
    timeout_s: float = 5.0
    """code sources: wall-clock limit per sandboxed program."""
    workers: int = 4
    """code sources: programs run at once."""
    partial: bool = False
    """code sources: score the fraction of tests passed instead of 1/0."""

    def __post_init__(self):
        modes = ("sum", "mean", "min", "mean_minus_std")
        if self.combine not in modes:
            raise ConfigError(f"reward.combine must be one of {modes}, got {self.combine!r}")
        if self.weights and self.combine != "sum":
            raise ConfigError(f"reward.weights apply to combine='sum' only; drop them or set reward.combine sum "
                              f"(combine is {self.combine!r})")
        for name, low in (("lam", 0), ("batch_size", 1), ("max_length", 2), ("workers", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"reward.{name} must be >= {low}, got {getattr(self, name)}")
        if not self.timeout_s > 0:
            raise ConfigError(f"reward.timeout_s must be > 0, got {self.timeout_s}")


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


def _rm(rest: str, cfg: RewardSourceConfig) -> RewardSource:
    from alignlab.rewards.model import RewardModelSource

    if not rest:
        raise ConfigError("reward source 'rm:': name the reward model directory, e.g. rm:runs/rm/final")
    mode = "mean" if cfg.combine == "sum" else cfg.combine
    return RewardModelSource(rest, whiten=cfg.whiten, batch_size=cfg.batch_size, mode=mode, lam=cfg.lam,
                             max_length=cfg.max_length)


def _code(rest: str, cfg: RewardSourceConfig) -> RewardSource:
    from alignlab.rewards.code import CodeReward

    return CodeReward(rest or "tests", partial=cfg.partial, timeout_s=cfg.timeout_s, workers=cfg.workers)


def _math(rest: str, cfg: RewardSourceConfig) -> RewardSource:
    from alignlab.rewards.math import MathReward

    return MathReward(rest or "answer")


def _rules(rest: str, cfg: RewardSourceConfig) -> RewardSource:
    from alignlab.rewards.rules import RuleReward

    if not rest:
        raise ConfigError("reward source 'rules:': name the rules file, e.g. rules:my_rules.yaml")
    return RuleReward.from_yaml(rest)


SPEC_KINDS: dict[str, Callable[[str, RewardSourceConfig], RewardSource]] = {
    "python": lambda rest, cfg: FunctionReward(load_function(rest), name=rest),
    "rm": _rm,
    "math": _math,
    "code": _code,
    "rules": _rules,
}
"""Spec prefix -> factory(rest of the spec, config) returning a RewardSource."""


def build_source(spec: str, cfg: RewardSourceConfig) -> RewardSource:
    kind, _, rest = spec.partition(":")
    if kind not in SPEC_KINDS:
        raise ConfigError(f"unknown reward source {spec!r}; expected one of: "
                          + ", ".join(f"{k}:..." for k in SPEC_KINDS))
    return SPEC_KINDS[kind](rest, cfg)


def build_reward(cfg: RewardSourceConfig) -> RewardSource:
    """The configured reward source: one source, their weighted sum, or their ensemble (`cfg.combine`)."""
    if not cfg.sources:
        raise ConfigError("reward.sources is empty: name at least one reward source")
    if cfg.weights and len(cfg.weights) != len(cfg.sources):
        raise ConfigError(f"reward.weights has {len(cfg.weights)} values for {len(cfg.sources)} sources")
    sources = [build_source(s, cfg) for s in cfg.sources]
    if len(sources) == 1 and not cfg.weights:
        return sources[0]
    from alignlab.rewards.combine import EnsembleReward, WeightedSum

    if cfg.combine == "sum":
        return WeightedSum(sources, cfg.weights or [1.0] * len(sources))
    return EnsembleReward(sources, mode=cfg.combine, lam=cfg.lam)
