"""How `alignlab demo` measures a policy: the state the stages share (`Demo`), sampling the eval openings, the gold
and proxy reward and the KL estimates (`measure`), a stage's result (`evaluate`) and its checkpoint curve
(`with_curve`). docs/lab.md describes the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignlab.data import PromptCompletion, tokenize_sft
from alignlab.eval import sequence_kl
from alignlab.lab.demo_report import StageResult
from alignlab.lab.tasks import sentiment
from alignlab.models import load_model
from alignlab.models.reward import normalize_scores
from alignlab.recipes import reward_eval
from alignlab.rollout import HFEngine, Sampling
from alignlab.runtime import Progress

if TYPE_CHECKING:
    from alignlab.lab.demo import DemoConfig

MAX_LENGTH = 64  # tokens of opening + completion in every stage's training data (openings ~5, completions <= 25)


@dataclass
class Demo:
    """What the stages share: the config, the models trained so far and where they are."""

    cfg: DemoConfig
    out: Path
    prompts: list[str]
    base_path: Path | None = None
    tokenizer: Any = None
    base: Any = None
    sft_path: Path | None = None
    sft: Any = None
    train_pairs: Path | None = None
    heldout_pairs: Path | None = None
    rm_path: Path | None = None
    rm: Any = None
    results: list[StageResult] = field(default_factory=list)
    rollouts: dict[str, Any] = field(default_factory=dict)
    """stage -> the Rollouts of its evaluation (measured again by models that come later)."""


# ---------------------------------------------------------------- measuring a policy


@torch.no_grad()
def proxy_scores(demo: Demo, rollouts) -> torch.Tensor:
    """(B,) whitened RM scores of the rollouts' prompt + completion texts, tokenized as the RM's training pairs
    were (EOS appended)."""
    examples = [PromptCompletion(p, c, row=i + 1) for i, (p, c) in enumerate(zip(rollouts.prompts,
                                                                                 rollouts.completions))]
    features, _ = tokenize_sft(examples, demo.tokenizer, max_length=4 * MAX_LENGTH)
    scores = reward_eval.score_rows(reward_eval.scorer(demo.rm, "reward"), features, demo.tokenizer.pad_token_id,
                                    batch_size=64)  # (B, 1)
    return normalize_scores(scores, demo.rm)[:, 0]


def kl_estimate(model, reference, rollouts) -> float | None:
    """Mean k1 estimate of KL(model || reference) on `model`'s samples; None without a reference."""
    if reference is None:
        return None
    return 0.0 if reference is model else float(sequence_kl(model, reference, rollouts.batch()).mean())


def measure(demo: Demo, model, stage: str) -> tuple[dict, Any]:
    """Sample the eval openings once each (same seed for every policy); ({gold_reward, proxy_reward, kl_to_sft,
    kl_to_base}, floats or None where the model it needs does not exist yet; the rollouts)."""
    bar = Progress(4, enabled=demo.cfg.progress, desc=f"eval {stage}")
    rollouts = HFEngine(model, demo.tokenizer).generate(
        demo.prompts, 1, Sampling(max_new_tokens=demo.cfg.max_new_tokens), seed=demo.cfg.seed + 1)
    bar.update(1)
    gold = sentiment.gold_reward([p + c for p, c in zip(rollouts.prompts, rollouts.completions)])
    metrics = {"gold_reward": sum(gold) / len(gold), "kl_to_sft": kl_estimate(model, demo.sft, rollouts)}
    bar.update(2)
    metrics["kl_to_base"] = kl_estimate(model, demo.base, rollouts)
    bar.update(3)
    metrics["proxy_reward"] = None if demo.rm is None else float(proxy_scores(demo, rollouts).mean())
    bar.update(4)
    bar.close()
    return metrics, rollouts


def evaluate(demo: Demo, stage: str, model, **fields) -> StageResult:
    """A policy stage's result: its measurements, 8 sample texts, and `fields` (curve, run_dir, ...)."""
    metrics, rollouts = measure(demo, model, stage)
    demo.rollouts[stage] = rollouts
    samples = [p + c for p, c in zip(rollouts.prompts[:8], rollouts.completions[:8])]
    return StageResult(stage, **metrics, samples=samples, **fields)


def with_curve(demo: Demo, result: StageResult, run_dir: Path, start: StageResult) -> StageResult:
    """`result` (the measured final model of a run) with its `curve`: `start` (the policy the run began from) at
    step 0, every earlier checkpoint in `run_dir` measured, and `result` itself at the newest checkpoint's step."""
    keys = ("gold_reward", "proxy_reward", "kl_to_sft", "kl_to_base")
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    result.curve = [{"step": 0, **{k: getattr(start, k) for k in keys}}]
    for path in checkpoints[:-1]:
        result.curve.append({"step": int(path.name[5:]), **measure(demo, load_model(str(path)), path.name)[0]})
    if checkpoints:
        result.curve.append({"step": int(checkpoints[-1].name[5:]), **{k: getattr(result, k) for k in keys}})
    return result


def result_of(demo: Demo, stage: str) -> StageResult:
    return next(r for r in demo.results if r.stage == stage)
