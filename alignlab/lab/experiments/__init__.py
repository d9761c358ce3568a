"""Seeded reproductions of the classic alignment papers on the lab tasks: `alignlab lab list`, `alignlab lab run`.

Each experiment is one short module with `PAPER`, `CLAIM`, `SCALES` (settings per `--scale`) and
`run(ctx) -> Outcome`, written against the library's public API only, so each doubles as an example.
The runner (`run.py`) times it and writes `results.json`, the PNG plots and `report.md`, which puts the
paper's claim and our measured number side by side.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

EXPERIMENTS: dict[str, str] = {
    "instructgpt": "alignlab.lab.experiments.instructgpt",
    "dpo-frontier": "alignlab.lab.experiments.dpo_frontier",
    "overoptimization": "alignlab.lab.experiments.overoptimization",
    "hh-sqrt-kl": "alignlab.lab.experiments.hh_sqrt_kl",
    "pm-vs-imitation": "alignlab.lab.experiments.pm_vs_imitation",
    "rl-algorithms": "alignlab.lab.experiments.rl_algorithms",
    "preference-losses": "alignlab.lab.experiments.preference_losses",
    "rm-ensembles": "alignlab.lab.experiments.rm_ensembles",
}
"""Experiment name -> module."""

SCALE_NAMES = ("tiny", "default", "large")


@dataclass
class Context:
    """What an experiment gets: where to write, its settings at the chosen scale, the seed."""

    name: str
    out: Path
    scale: str
    settings: dict
    seed: int = 0
    progress: bool = True

    @property
    def work(self) -> Path:
        """Where the experiment's own runs go (`<out>/runs`, cleared before each run)."""
        return self.out / "runs"


@dataclass
class Check:
    """One directional claim and whether our numbers bear it out."""

    claim: str
    measured: str
    holds: bool


@dataclass
class Outcome:
    """An experiment's result: the numbers (JSON-able), the checks, and the plots it wrote."""

    numbers: dict
    checks: list[Check] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    notes: str = ""


def load(name: str) -> ModuleType:
    """The experiment module called `name`; KeyError listing the known names otherwise."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown lab experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])
