"""`alignlab demo`: base -> SFT -> reward model, then DPO and PPO from the SFT model side by side, on the lab
sentiment task, each stage measured against the programmatic gold reward.

Run:
    alignlab demo                      # builds the tiny base model on first use (no downloads)
    alignlab demo --output-dir runs/demo --sft-steps 300 --dpo-beta 0.2

Stages (one function each, run in the order of `STAGES`; training stages write normal run directories):
  base   the pretrained `lab:tiny` model (built and cached on first use)
  sft    SFT on moderately positive demonstrations (`lab:sentiment-sft`)                    -> `<out>/sft`
  pairs  two completions per review opening sampled from the SFT policy, labelled by the simulated
         Bradley-Terry labeler; a held-out share is relabelled by the gold reward (ties dropped)  -> `<out>/pairs`
  rm     a Bradley-Terry reward model (`recipes.reward`) from the SFT model on the train pairs; its accuracy
         against the gold preference on the held-out pairs                                  -> `<out>/rm`
  dpo    DPO (`recipes.preference`, loss dpo) from the SFT model on the same train pairs; its checkpoints are
         evaluated along the way (gold and proxy reward, KL over training)                  -> `<out>/dpo`
  ppo    PPO (`recipes.ppo`) from the SFT model against the reward model (its whitened score), critic
         initialized from the RM, adaptive KL to the SFT model, EOS penalty; checkpoints evaluated -> `<out>/ppo`
Each policy is sampled on review openings (one completion each, temperature 1; the grammar has 21 openings, so
these are fresh draws, not unseen openings) and measured by the gold reward, the proxy reward (the RM's whitened
score of the same samples; filled in for the stages before the RM once it exists) and k1 Monte-Carlo estimates
of KL(policy || SFT) and KL(policy || base) (`demo_eval.py`). Writes `results.json`, `report.html`
(self-contained: table, plots, samples), `report.png`, prints the table; a rerun replaces the stage directories
it made before.

Adding a stage: write `x_stage(demo: Demo) -> StageResult` that trains from `demo.sft_path` (and, for an
online method, the reward model at `demo.rm_path`) into `demo.out / "x"` (saving checkpoints), then returns
`with_curve(demo, evaluate(demo, "x", policy, run_dir=str(run_dir)), run_dir, result_of(demo, "sft"))`, as
`dpo_stage` and `ppo_stage` do; add its sizes to `DemoConfig` and the function to `STAGES`. Its table row,
results.json entry, point and trajectory in the gold-vs-KL plot and its gold/proxy curve over training then
appear without other changes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig, RolloutConfig
from alignlab.data.split import train_eval_split
from alignlab.errors import ConfigError
from alignlab.lab.base import tiny_model_path
from alignlab.lab.datasets import dataset_path
from alignlab.lab.demo_eval import MAX_LENGTH, Demo, evaluate, kl_estimate, proxy_scores, result_of, with_curve
from alignlab.lab.demo_report import StageResult, table, write_report
from alignlab.lab.pairs import sentiment_pairs, write_pairs
from alignlab.lab.tasks import sentiment
from alignlab.models import load_model, load_tokenizer
from alignlab.models.reward import load_reward_model
from alignlab.recipes import ppo, preference, reward, reward_eval, sft
from alignlab.rewards import RewardSourceConfig

log = logging.getLogger("alignlab")


@dataclass
class DemoConfig:
    """The lab demo: base -> SFT -> reward model, then DPO and PPO from SFT, on the sentiment task, scored by gold."""

    output_dir: str = "runs/demo"
    """Where every stage's run directory and the report go."""
    seed: int = 0
    """Seed for data, training and sampling."""
    sft_steps: int = 200
    """SFT optimizer steps (batch 32)."""
    pairs: int = 2000
    """Review openings sampled for preference pairs, two SFT completions each."""
    heldout_fraction: float = 0.2
    """Share of the pairs held out (relabelled by the gold reward) to measure the RM's accuracy."""
    labeler_temperature: float = 0.05
    """Bradley-Terry temperature of the simulated labeler of the train pairs (0 = always the higher gold)."""
    rm_steps: int = 200
    """Reward-model optimizer steps (batch 32 pairs)."""
    rm_lr: float = 2e-3
    """Reward-model peak learning rate (linear decay)."""
    dpo_steps: int = 60
    """DPO optimizer steps (batch 16 pairs)."""
    dpo_lr: float = 2e-4
    """DPO peak learning rate (cosine decay)."""
    dpo_beta: float = 0.1
    """DPO temperature beta of the implicit reward beta * log(pi / pi_sft)."""
    dpo_evals: int = 4
    """DPO checkpoints evaluated during training (gold and proxy reward and KL over training)."""
    ppo_steps: int = 30
    """PPO steps (16 openings x 2 completions each; 2 epochs x 2 minibatches per step)."""
    ppo_lr: float = 2e-4
    """PPO policy learning rate (constant; the critic uses 1e-3)."""
    ppo_kl_target: float = 3.0
    """Target KL(policy || SFT) of PPO's adaptive KL controller, nats per completion."""
    ppo_evals: int = 3
    """PPO checkpoints evaluated during training."""
    eval_prompts: int = 128
    """Review openings sampled per evaluated policy for the gold and proxy reward and the KL estimates."""
    max_new_tokens: int = 24
    """Sampled completion length (evaluation and pairs)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self):
        for name in ("sft_steps", "pairs", "rm_steps", "dpo_steps", "dpo_evals", "ppo_steps", "ppo_evals",
                     "eval_prompts", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.heldout_fraction < 1.0 or self.labeler_temperature < 0 or self.dpo_beta <= 0:
            raise ConfigError("heldout_fraction must be in (0, 1), labeler_temperature >= 0, dpo_beta > 0")
        if self.ppo_lr <= 0 or self.ppo_kl_target <= 0:
            raise ConfigError("ppo_lr and ppo_kl_target must be > 0")


# ---------------------------------------------------------------- the stages


def base_stage(demo: Demo) -> StageResult:
    """The pretrained tiny model, built and cached on first use."""
    demo.base_path = tiny_model_path()
    demo.tokenizer = load_tokenizer(str(demo.base_path))
    demo.base = load_model(str(demo.base_path))
    return evaluate(demo, "base", demo.base, run_dir=str(demo.base_path))


def sft_stage(demo: Demo) -> StageResult:
    """SFT on demonstrations that are 80% positive reviews."""
    cfg, out = demo.cfg, demo.out / "sft"
    sft.main(sft.SFTConfig(
        model=ModelConfig(path=str(demo.base_path)),
        data=DataConfig(dataset=str(dataset_path("sentiment-sft")), max_length=MAX_LENGTH, eval_fraction=0.05),
        optim=OptimConfig(lr=1e-3, batch_size=32, max_steps=cfg.sft_steps, warmup_steps=10),
        log=LogConfig(output_dir=str(out), log_every=10, eval_every=max(cfg.sft_steps // 4, 1), save_every=0,
                      progress=cfg.progress),
        seed=cfg.seed))
    demo.sft_path, demo.sft = out, load_model(str(out))
    # the base row's KL to SFT, on its own samples, now that SFT exists
    result_of(demo, "base").kl_to_sft = kl_estimate(demo.base, demo.sft, demo.rollouts["base"])
    return evaluate(demo, "sft", demo.sft, run_dir=str(out))


def pairs_stage(demo: Demo) -> StageResult:
    """SFT samples labelled by the simulated labeler (train) and by the gold reward (held-out, ties dropped)."""
    cfg, out = demo.cfg, demo.out / "pairs"
    pairs = sentiment_pairs(cfg.pairs, seed=cfg.seed + 1, temperature=cfg.labeler_temperature, policy=demo.sft,
                            tokenizer=demo.tokenizer, max_new_tokens=cfg.max_new_tokens)
    train, held = train_eval_split(pairs, cfg.heldout_fraction, seed=cfg.seed)
    gold = [p if p.score_chosen > p.score_rejected else dataclasses.replace(
        p, chosen=p.rejected, rejected=p.chosen, score_chosen=p.score_rejected, score_rejected=p.score_chosen)
        for p in held if p.score_chosen != p.score_rejected]
    demo.train_pairs = write_pairs(train, out / "train.jsonl")
    demo.heldout_pairs = write_pairs(gold, out / "heldout.jsonl")
    decided = [p for p in train if p.score_chosen != p.score_rejected]  # a tie's label is a coin flip
    agree = sum(p.score_chosen > p.score_rejected for p in decided) / max(len(decided), 1)
    info = {"sampled": cfg.pairs, "train_pairs": len(train), "heldout_pairs": len(gold),
            "heldout_ties_dropped": len(held) - len(gold), "train_labels_agree_with_gold": agree,
            "train_gold_ties": sum(p.score_chosen == p.score_rejected for p in train)}
    log.info("pairs: %s", info)
    samples = [f"{p.prompt} | chosen:{p.chosen} | rejected:{p.rejected}" for p in train[:4]]
    return StageResult("pairs", info=info, samples=samples, run_dir=str(out))


def rm_stage(demo: Demo) -> StageResult:
    """A Bradley-Terry RM from the SFT model on the train pairs; accuracy vs gold on the held-out pairs."""
    cfg, out = demo.cfg, demo.out / "rm"
    reward.main(reward.RewardConfig(
        model=ModelConfig(path=str(demo.sft_path)),
        data=DataConfig(dataset=str(demo.train_pairs), max_length=MAX_LENGTH, eval_fraction=0.1),
        optim=OptimConfig(lr=cfg.rm_lr, batch_size=32, max_steps=cfg.rm_steps, warmup_steps=5, scheduler="linear"),
        log=LogConfig(output_dir=str(out), log_every=5, eval_every=max(cfg.rm_steps // 4, 1), save_every=0,
                      progress=cfg.progress),
        seed=cfg.seed))
    heldout = reward_eval.main(reward_eval.RewardEvalConfig(
        model=str(out), dataset=str(demo.heldout_pairs), output_dir=str(out / "heldout"), max_length=MAX_LENGTH))
    demo.rm_path, demo.rm = out, load_reward_model(str(out)).eval()
    for r in demo.results:  # the stages before the RM get their proxy reward now
        if r.proxy_reward is None and r.stage in demo.rollouts:
            r.proxy_reward = float(proxy_scores(demo, demo.rollouts[r.stage]).mean())
    return StageResult("rm", rm_accuracy=heldout["accuracy"], run_dir=str(out),
                       info={"heldout_pairs": heldout["pairs"], "heldout_ece": heldout["ece"]})


def dpo_stage(demo: Demo) -> StageResult:
    """DPO from the SFT model (also the reference) on the train pairs; checkpoints measured on the way."""
    cfg, out = demo.cfg, demo.out / "dpo"
    every = max(cfg.dpo_steps // cfg.dpo_evals, 1)
    preference.main(preference.PreferenceConfig(
        model=ModelConfig(path=str(demo.sft_path)),
        data=DataConfig(dataset=str(demo.train_pairs), max_length=MAX_LENGTH, eval_fraction=0.1),
        optim=OptimConfig(lr=cfg.dpo_lr, batch_size=16, max_steps=cfg.dpo_steps, warmup_steps=5),
        log=LogConfig(output_dir=str(out), log_every=5, eval_every=every, save_every=every, keep_checkpoints=0,
                      progress=cfg.progress),
        pref=preference.PreferenceOptions(loss="dpo", beta=cfg.dpo_beta, ref_cache_dir=str(out / "ref-cache")),
        seed=cfg.seed))
    final = evaluate(demo, "dpo", load_model(str(out)), run_dir=str(out))
    return with_curve(demo, final, out, start=result_of(demo, "sft"))


def ppo_stage(demo: Demo) -> StageResult:
    """PPO from the SFT model (also the reference) against the RM's whitened score, the critic initialized from
    the RM, adaptive KL; completions that never end get score -1. Checkpoints measured on the way."""
    cfg, out = demo.cfg, demo.out / "ppo"
    every = max(cfg.ppo_steps // cfg.ppo_evals, 1)
    ppo.main(ppo.PPOConfig(
        model=ModelConfig(path=str(demo.sft_path)),
        data=DataConfig(dataset=str(dataset_path("sentiment-prompts")), eval_fraction=0.0),
        optim=OptimConfig(lr=cfg.ppo_lr, max_steps=cfg.ppo_steps, scheduler="constant"),
        log=LogConfig(output_dir=str(out), log_every=5, save_every=every, keep_checkpoints=0, progress=cfg.progress),
        rollout=RolloutConfig(prompts_per_step=16, group_size=2, max_new_tokens=cfg.max_new_tokens,
                              sample_every=every),
        reward=RewardSourceConfig(sources=[f"rm:{demo.rm_path}"], max_length=MAX_LENGTH),
        ppo=ppo.PPOOptions(critic_path=str(demo.rm_path), critic_lr=1e-3, kl_coef=0.1, kl_target=cfg.ppo_kl_target,
                           kl_horizon=64, epochs=2, minibatches=2, missing_eos_penalty=-1.0),
        seed=cfg.seed))
    final = evaluate(demo, "ppo", load_model(str(out)), run_dir=str(out))
    return with_curve(demo, final, out, start=result_of(demo, "sft"))


STAGES = (base_stage, sft_stage, pairs_stage, rm_stage, dpo_stage, ppo_stage)
"""The pipeline in order: each `stage(demo) -> StageResult` reads what the earlier ones left in `demo`."""


def main(cfg: DemoConfig) -> list[StageResult]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("sft", "pairs", "rm", "dpo", "ppo"):  # the demo's own stage outputs from an earlier run
        shutil.rmtree(out / name, ignore_errors=True)
    torch.manual_seed(cfg.seed)
    demo = Demo(cfg, out, prompts=sentiment.prompts(cfg.eval_prompts, seed=cfg.seed + 10_000))
    for i, stage in enumerate(STAGES):
        log.info("demo stage %d/%d: %s", i + 1, len(STAGES), stage.__name__.removesuffix("_stage"))
        wall, cpu = time.perf_counter(), time.process_time()
        result = stage(demo)
        result.seconds, result.cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
        demo.results.append(result)
    (out / "results.json").write_text(json.dumps([dataclasses.asdict(r) for r in demo.results], indent=2))
    html = write_report(out, demo.results, cfg)
    print("\n" + table(demo.results))
    print(f"\nreport: {html}\nresults: {out / 'results.json'}")
    return demo.results
