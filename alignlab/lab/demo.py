"""`alignlab demo`: alignment on the lab sentiment task, measured against the gold reward.

Run:
    alignlab demo                      # builds the tiny base model on first use (no downloads)
    alignlab demo --output-dir runs/demo --sft-steps 300

Stages: the pretrained tiny base model -> SFT on moderately positive demonstrations. Each stage's policy is
sampled on review openings (the task grammar has 21, the same ones its training data starts with; the
continuations are what differ) and scored by the programmatic gold sentiment reward; KL to the base model is
estimated on the same samples. Writes `results.json`, `report.png` and each stage's run directory; a rerun
replaces the stage directories it made before.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig
from alignlab.eval import sequence_kl
from alignlab.lab.base import tiny_model_path
from alignlab.lab.datasets import dataset_path
from alignlab.lab.tasks import sentiment
from alignlab.models import load_model, load_tokenizer
from alignlab.recipes import sft
from alignlab.rollout import HFEngine, Sampling

log = logging.getLogger("alignlab")


@dataclass
class DemoConfig:
    """The lab demo: base -> SFT on the sentiment task, scored by the gold reward."""

    output_dir: str = "runs/demo"
    """Where every stage's run directory and the report go."""
    seed: int = 0
    """Seed for data, training and sampling."""
    sft_steps: int = 200
    """SFT optimizer steps."""
    eval_prompts: int = 128
    """Review openings sampled per stage for the gold reward and KL."""
    max_new_tokens: int = 24
    """Sampled completion length."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class StageResult:
    stage: str
    gold_reward: float
    kl_to_base: float
    samples: list[str]


def evaluate_policy(stage: str, model, base, tokenizer, prompts: list[str], cfg: DemoConfig) -> StageResult:
    """Sample one completion per prompt at temperature 1; gold reward and KL(policy || base)."""
    engine = HFEngine(model, tokenizer)
    rollouts = engine.generate(prompts, 1, Sampling(max_new_tokens=cfg.max_new_tokens), seed=cfg.seed + 1)
    gold = sentiment.gold_reward([p + c for p, c in zip(rollouts.prompts, rollouts.completions)])
    kl = sequence_kl(model, base, rollouts.batch()) if model is not base else torch.zeros(len(gold))
    return StageResult(stage, float(sum(gold) / len(gold)), float(kl.mean()),
                       [p + c for p, c in list(zip(rollouts.prompts, rollouts.completions))[:8]])


def sft_config(cfg: DemoConfig, base_path: Path, out: Path) -> sft.SFTConfig:
    return sft.SFTConfig(
        model=ModelConfig(path=str(base_path)),
        data=DataConfig(dataset=str(dataset_path("sentiment-sft")), max_length=64, eval_fraction=0.05),
        optim=OptimConfig(lr=1e-3, batch_size=32, max_steps=cfg.sft_steps, warmup_steps=10),
        log=LogConfig(output_dir=str(out / "sft"), log_every=10, eval_every=50, save_every=0,
                      progress=cfg.progress),
        seed=cfg.seed,
    )


def plot(out: Path, results: list[StageResult], sft_metrics: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [m["step"] for m in sft_metrics if "loss" in m]
    ax1.plot(steps, [m["loss"] for m in sft_metrics if "loss" in m], label="train")
    ev = [m for m in sft_metrics if "eval_loss" in m]
    ax1.plot([m["step"] for m in ev], [m["eval_loss"] for m in ev], "o-", label="held-out")
    ax1.set(xlabel="SFT step", ylabel="NLL per completion token", title="SFT learning curve")
    ax1.legend()
    ax2.bar([r.stage for r in results], [r.gold_reward for r in results], color=["#999", "#4c72b0"])
    ax2.axhline(0.5, ls="--", c="k", lw=0.8)
    ax2.set(ylim=(0, 1), ylabel="mean gold reward", title="Gold sentiment reward per stage")
    fig.tight_layout()
    path = out / "report.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def table(results: list[StageResult]) -> str:
    lines = [f"{'stage':<8} {'gold reward':>12} {'KL to base':>11}"]
    lines += [f"{r.stage:<8} {r.gold_reward:>12.3f} {r.kl_to_base:>11.2f}" for r in results]
    return "\n".join(lines)


def main(cfg: DemoConfig) -> list[StageResult]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "sft", ignore_errors=True)  # the demo's own stage output from an earlier run
    torch.manual_seed(cfg.seed)
    # 0. the base model (built and cached on first use) and held-out prompts
    base_path = tiny_model_path()
    tokenizer = load_tokenizer(str(base_path))
    base = load_model(str(base_path))
    prompts = sentiment.prompts(cfg.eval_prompts, seed=cfg.seed + 10_000)
    results = [evaluate_policy("base", base, base, tokenizer, prompts, cfg)]
    # 1. SFT on demonstrations
    log.info("stage 1/1: SFT for %d steps", cfg.sft_steps)
    sft_cfg = sft_config(cfg, base_path, out)
    sft.main(sft_cfg)
    policy = load_model(sft_cfg.log.output_dir)
    results.append(evaluate_policy("sft", policy, base, tokenizer, prompts, cfg))
    # 2. report
    metrics = [json.loads(line) for line in (Path(sft_cfg.log.output_dir) / "metrics.jsonl").open()]
    png = plot(out, results, metrics)
    (out / "results.json").write_text(json.dumps([r.__dict__ for r in results], indent=2))
    print("\n" + table(results))
    print(f"\nreport: {png}\nresults: {out / 'results.json'}")
    return results
