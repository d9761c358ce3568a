"""`alignlab lab list`: the lab experiments, their papers and claims."""

from __future__ import annotations

from dataclasses import dataclass

from alignlab.lab.experiments import EXPERIMENTS, load


@dataclass
class LabListConfig:
    """List the lab experiments (run one with `alignlab lab run NAME`)."""

    verbose: bool = False
    """Also print each experiment's claim and its settings per scale."""


def main(cfg: LabListConfig) -> list[str]:
    for name in EXPERIMENTS:
        module = load(name)
        print(f"{name:<20} {module.PAPER}")
        if cfg.verbose:
            print(f"{'':<20} claim: {module.CLAIM}")
            for scale, settings in module.SCALES.items():
                print(f"{'':<20} --scale {scale}: {settings}")
    return list(EXPERIMENTS)
