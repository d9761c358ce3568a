"""`alignlab lab run NAME [--scale tiny|default|large]`: run one lab experiment and write its report.

Run:
    alignlab lab list
    alignlab lab run preference-losses                     # default scale, <= ~10 CPU-minutes
    alignlab lab run pm-vs-imitation --scale tiny --output-dir runs/lab/pm

Writes `<output_dir>/results.json` (settings, numbers, checks, runtime), the experiment's PNG plots and
`report.md` (the paper's claim next to our measured numbers, and whether each directional claim held).
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from alignlab.errors import ConfigError
from alignlab.lab.experiments import EXPERIMENTS, Context, Outcome, load

log = logging.getLogger("alignlab")


@dataclass
class LabRunConfig:
    """Run one lab experiment (a seeded reproduction of a paper's finding) and write its report."""

    name: Annotated[str, tyro.conf.Positional]
    """Experiment name (`alignlab lab list` shows them)."""
    scale: Literal["tiny", "default", "large"] = "default"
    """tiny: seconds (the test suite); default: <= ~10 CPU-minutes; large: closer to the paper."""
    output_dir: str = ""
    """Where results.json, plots and report.md go (default: runs/lab/<name>)."""
    seed: int = 0
    """Seed of data, training and sampling."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self):
        if self.name not in EXPERIMENTS:
            raise ConfigError(f"unknown lab experiment {self.name!r}; known: {', '.join(EXPERIMENTS)}")


def report(name: str, module, ctx: Context, outcome: Outcome, seconds: float) -> str:
    """report.md: the paper and its claim, our numbers, each check, the plots."""
    lines = [f"# {name}", "", f"**Paper:** {module.PAPER}", "", f"**Paper's claim:** {module.CLAIM}", "",
             f"Scale `{ctx.scale}`, seed {ctx.seed}, runtime {seconds:.0f} s. Settings: `{ctx.settings}`.", "",
             "| claim | our measurement | holds |", "|---|---|---|"]
    lines += [f"| {c.claim} | {c.measured} | {'yes' if c.holds else 'NO'} |" for c in outcome.checks]
    if outcome.notes:
        lines += ["", outcome.notes]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in outcome.plots]
    return "\n".join(lines) + "\n"


def cpu_seconds() -> float:
    """CPU time of this process plus its finished child processes (experiments that launch recipes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def main(cfg: LabRunConfig) -> dict:
    module = load(cfg.name)
    out = Path(cfg.output_dir or f"runs/lab/{cfg.name}")
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "runs", ignore_errors=True)  # this experiment's own runs from an earlier call
    ctx = Context(cfg.name, out, cfg.scale, dict(module.SCALES[cfg.scale]), cfg.seed, cfg.progress)
    start, cpu = time.perf_counter(), cpu_seconds()
    outcome = module.run(ctx)
    seconds = time.perf_counter() - start
    result = {"name": cfg.name, "paper": module.PAPER, "claim": module.CLAIM, "scale": cfg.scale, "seed": cfg.seed,
              "settings": ctx.settings, "numbers": outcome.numbers, "checks": [asdict(c) for c in outcome.checks],
              "plots": [p.name for p in outcome.plots], "seconds": round(seconds, 1),
              "cpu_seconds": round(cpu_seconds() - cpu, 1)}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(report(cfg.name, module, ctx, outcome, seconds))
    for c in outcome.checks:
        print(f"[{'holds' if c.holds else 'DOES NOT HOLD'}] {c.claim}: {c.measured}")
    print(f"\nreport: {out / 'report.md'}\nresults: {out / 'results.json'}")
    return result
