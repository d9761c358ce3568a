"""dpo-frontier (Rafailov et al. 2023, Fig. 2): gold reward vs KL to the reference, DPO at several beta and PPO
at several KL targets.

From the SFT policy: DPO on simulated-labeler pairs of its samples at each beta, and PPO against the gold reward
itself (as the paper's PPO-GT) with the adaptive KL controller at each target; every checkpoint of every run is
one (KL, gold) point. The frontier of a method is the best gold it reaches at or below each KL.
"""

from __future__ import annotations

from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig
from alignlab.lab.experiments import Check, Context, Outcome
from alignlab.lab.experiments.common import (
    checkpoint_curve,
    evaluate_policy,
    pair_files,
    scatter_plot,
    sft_policy,
    train_ppo,
)
from alignlab.lab.rewards import LAB_REWARDS
from alignlab.models import load_model, load_tokenizer
from alignlab.recipes import preference

PAPER = "Rafailov et al. 2023, Direct Preference Optimization (arXiv:2305.18290), §6.1 and Fig. 2 (left)"
CLAIM = ("DPO's reward/KL frontier dominates PPO's: at the same KL to the reference, DPO reaches a higher "
         "reward, even when PPO optimizes the ground-truth reward.")
GOLD = f"python:alignlab.lab.rewards:{LAB_REWARDS['sentiment-gold']}"
SCALES = {
    "tiny": {"betas": [0.1], "kl_targets": [2.0], "kl_horizon": 64, "sft_steps": 20, "pairs": 64, "dpo_lr": 5e-4,
             "steps": 4, "save_every": 2, "eval_prompts": 16},
    "default": {"betas": [0.05, 0.1, 0.5], "kl_targets": [1.0, 3.0, 6.0], "kl_horizon": 64, "sft_steps": 150,
                "pairs": 1024, "dpo_lr": 1e-4, "steps": 60, "save_every": 15, "eval_prompts": 128},
    "large": {"betas": [0.05, 0.1, 0.3, 1.0], "kl_targets": [1.0, 2.0, 4.0, 8.0], "kl_horizon": 64, "sft_steps": 300,
              "pairs": 2048, "dpo_lr": 1e-4, "steps": 120, "save_every": 20, "eval_prompts": 256},
}


def train_dpo(ctx: Context, data, sft_path, beta: float):
    s, out = ctx.settings, ctx.work / f"dpo-{beta:g}"
    preference.main(preference.PreferenceConfig(
        model=ModelConfig(path=str(sft_path)), data=DataConfig(dataset=str(data), max_length=64, eval_fraction=0.0),
        optim=OptimConfig(lr=s["dpo_lr"], batch_size=16, max_steps=s["steps"],
                          warmup_steps=min(5, s["steps"] // 2)),
        log=LogConfig(output_dir=str(out), save_every=s["save_every"], keep_checkpoints=0, tensorboard=False,
                      progress=ctx.progress),
        pref=preference.PreferenceOptions(loss="dpo", beta=beta), seed=ctx.seed))
    return out


def frontier(points: list[dict]) -> list[tuple[float, float]]:
    """The upper-left envelope: (KL, best gold at or below this KL), for each point by increasing KL."""
    best, out = float("-inf"), []
    for p in sorted(points, key=lambda p: p["kl"]):
        best = max(best, p["gold"])
        out.append((p["kl"], best))
    return out


def dominated_share(mine: list[dict], theirs: list[dict]) -> float:
    """Share of `theirs` points with a point of `mine` at no more KL and at least as much gold."""
    hits = [any(m["kl"] <= t["kl"] and m["gold"] >= t["gold"] for m in mine) for t in theirs]
    return sum(hits) / max(len(hits), 1)


def run(ctx: Context) -> Outcome:
    s = ctx.settings
    sft_path = sft_policy(ctx.work / "sft", steps=s["sft_steps"], seed=ctx.seed, progress=ctx.progress)
    files = pair_files(ctx.work / "pairs", sft_path, train=s["pairs"], held_out=0, seed=ctx.seed,
                       labeler_temperature=0.05)
    sft, tokenizer = load_model(str(sft_path)), load_tokenizer(str(sft_path))
    start = evaluate_policy(sft, sft, tokenizer, prompts=s["eval_prompts"], seed=ctx.seed)
    kw = dict(prompts=s["eval_prompts"], seed=ctx.seed)
    points = {"dpo": [], "ppo": []}
    for beta in s["betas"]:
        for p in checkpoint_curve(train_dpo(ctx, files["train"][0.0], sft_path, beta), sft, tokenizer, **kw):
            points["dpo"].append({**p, "beta": beta})
    for target in s["kl_targets"]:
        out = train_ppo(ctx.work / f"ppo-{target:g}", sft_path, [GOLD], steps=s["steps"], save_every=s["save_every"],
                        seed=ctx.seed, progress=ctx.progress, kl_coef=0.05, kl_target=target,
                        kl_horizon=s["kl_horizon"])
        points["ppo"] += [{**p, "kl_target": target} for p in checkpoint_curve(out, sft, tokenizer, **kw)]
    share = dominated_share(points["dpo"], points["ppo"])
    plots = [scatter_plot(ctx.out / "frontier.png", {m: ([p["kl"] for p in v], [p["gold"] for p in v])
                                                     for m, v in points.items()},
                          lines={f"{m} frontier": tuple(map(list, zip(*frontier(v)))) for m, v in points.items()},
                          xlabel="KL to SFT (nats)", ylabel="mean gold reward", title="Reward vs KL frontier")]
    best = {m: max(p["gold"] for p in v) for m, v in points.items()}
    checks = [Check("DPO points dominate PPO points (no more KL, at least as much gold)",
                    f"{share:.0%} of PPO's {len(points['ppo'])} points dominated", share >= 0.5),
              Check("both methods raise gold reward over SFT", f"best DPO {best['dpo']:.3f}, best PPO "
                    f"{best['ppo']:.3f}, SFT {start['gold']:.3f}", min(best.values()) > start["gold"])]
    return Outcome({"sft_gold": start["gold"], "points": points, "dominated_share": share}, checks, plots)
