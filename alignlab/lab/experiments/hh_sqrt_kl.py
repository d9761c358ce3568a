"""hh-sqrt-kl (Bai et al. 2022): during PPO the preference-model score grows about linearly in sqrt(KL).

SFT policy -> labelled pairs -> Bradley-Terry PM -> PPO against the PM with a checkpoint every few steps;
each checkpoint's samples are scored by the PM (whitened) and the gold reward, with KL to the SFT policy;
PM score vs sqrt(KL) is fitted with a line (intercept, slope, R^2).
"""

from __future__ import annotations

import math

from alignlab.lab.experiments import Check, Context, Outcome
from alignlab.lab.experiments.common import (
    checkpoint_curve,
    evaluate_policy,
    line_plot,
    pair_files,
    sft_policy,
    train_ppo,
    train_rm,
)
from alignlab.lab.experiments.fits import fit_line
from alignlab.models import load_model, load_tokenizer
from alignlab.rewards import RewardSourceConfig, build_reward

PAPER = ("Bai et al. 2022, Training a Helpful and Harmless Assistant with RLHF (arXiv:2204.05862), §4.3 and "
         "Fig. 13")
CLAIM = "During RLHF the PM score is approximately linear in sqrt(KL(policy || initial policy))."
SCALES = {
    "tiny": {"sft_steps": 20, "pairs": 64, "rm_epochs": 1, "rm_batch": 16, "rm_warmup": 0, "ppo_steps": 4,
             "save_every": 2, "eval_prompts": 16},
    "default": {"sft_steps": 150, "pairs": 1024, "rm_epochs": 4, "rm_batch": 32, "rm_warmup": 5, "ppo_steps": 60,
                "save_every": 6, "eval_prompts": 96},
    "large": {"sft_steps": 300, "pairs": 4096, "rm_epochs": 4, "rm_batch": 32, "rm_warmup": 5, "ppo_steps": 200,
              "save_every": 10, "eval_prompts": 256},
}


def run(ctx: Context) -> Outcome:
    s = ctx.settings
    sft_path = sft_policy(ctx.work / "sft", steps=s["sft_steps"], seed=ctx.seed, progress=ctx.progress)
    files = pair_files(ctx.work / "pairs", sft_path, train=s["pairs"], held_out=0, seed=ctx.seed,
                       labeler_temperature=0.05)
    rm = train_rm(ctx.work / "rm", files["train"][0.0], policy=sft_path, rows=None, epochs=s["rm_epochs"],
                  batch=s["rm_batch"], warmup_steps=s["rm_warmup"], seed=ctx.seed, progress=ctx.progress)
    out = train_ppo(ctx.work / "ppo", sft_path, [f"rm:{rm}"], steps=s["ppo_steps"], save_every=s["save_every"],
                    seed=ctx.seed, progress=ctx.progress, critic_path=rm)
    sft, tokenizer = load_model(str(sft_path)), load_tokenizer(str(sft_path))
    proxy = build_reward(RewardSourceConfig(sources=[f"rm:{rm}"]))
    start = evaluate_policy(sft, sft, tokenizer, prompts=s["eval_prompts"], seed=ctx.seed, proxy=proxy)
    points = [{"step": 0, **{k: v for k, v in start.items() if k != "samples"}}]
    points += checkpoint_curve(out, sft, tokenizer, prompts=s["eval_prompts"], seed=ctx.seed, proxy=proxy)
    d = [math.sqrt(max(p["kl"], 0.0)) for p in points]
    fit = fit_line(d, [p["proxy"] for p in points])
    plots = [line_plot(ctx.out / "pm_vs_sqrt_kl.png", {"PM score": (d, [p["proxy"] for p in points]),
                                                       "gold reward": (d, [p["gold"] for p in points])},
                       xlabel="sqrt(KL to SFT)", ylabel="score", title="Bai 2022: reward vs sqrt(KL)")]
    checks = [Check("PM score rises with sqrt(KL)", f"slope {fit['slope']:.3f} per sqrt-nat", fit["slope"] > 0),
                Check("a line in sqrt(KL) fits the PM score", f"R^2 {fit['r2']:.2f} over {len(points)} points",
                      fit["r2"] > 0.8)]
    return Outcome({"points": points, "fit": fit}, checks, plots)
