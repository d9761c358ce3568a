"""overoptimization (Gao et al. 2022): optimizing a proxy reward model, the gold reward first rises then falls.

The proxy is a reward model trained on simulated-labeler pairs of the SFT policy's samples; the lab's gold
sentiment reward plays the "gold RM". Best-of-n (selected by the proxy, n = 1 .. n_max, unbiased estimates
from one set of samples, KL = log n - (n-1)/n) and PPO against the proxy (gold and proxy of each checkpoint's
samples, KL to the SFT policy) are plotted against d = sqrt(KL) and fitted with the paper's functional forms.
Proxy RMs trained on fewer and more comparisons show how the proxy-gold gap depends on the RM's data.
"""

from __future__ import annotations

import json
import math

from alignlab.config import DataConfig, LogConfig, ModelConfig
from alignlab.eval.best_of_n import bon_kl
from alignlab.lab.datasets import dataset_path
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
from alignlab.lab.experiments.fits import fit_bon, fit_rl
from alignlab.lab.rewards import LAB_REWARDS
from alignlab.models import load_model, load_tokenizer
from alignlab.recipes import best_of_n
from alignlab.rewards import RewardSourceConfig, build_reward

PAPER = "Gao, Schulman, Hilton 2022, Scaling Laws for Reward Model Overoptimization (arXiv:2210.10760)"
CLAIM = ("Against a proxy RM, the gold reward follows R_bon(d) = d(alpha - beta d) for best-of-n and "
         "R_RL(d) = d(alpha - beta log d) for RL, d = sqrt(KL); the proxy keeps rising while the gold falls "
         "behind it, and proxy RMs trained on more data are overoptimized less.")
GOLD = f"python:alignlab.lab.rewards:{LAB_REWARDS['sentiment-gold']}"
SCALES = {
    "tiny": {"sft_steps": 20, "rm_sizes": [32], "rm_epochs": 1, "n_max": 4, "bon_prompts": 8, "ppo_steps": 4,
             "ppo_save_every": 2, "eval_prompts": 16},
    "default": {"sft_steps": 150, "rm_sizes": [128, 1024], "rm_epochs": 2, "n_max": 64, "bon_prompts": 64,
                "ppo_steps": 60, "ppo_save_every": 10, "eval_prompts": 96},
    "large": {"sft_steps": 300, "rm_sizes": [128, 512, 2048], "rm_epochs": 2, "n_max": 256, "bon_prompts": 128,
              "ppo_steps": 200, "ppo_save_every": 20, "eval_prompts": 256},
}


def best_of_n_curve(ctx: Context, sft_path, rm_path, name: str) -> dict:
    """Proxy and gold value of the proxy's best-of-k pick for k = 1, 2, 4, ... n_max (one set of samples)."""
    s = ctx.settings
    cfg = best_of_n.BoNConfig(
        model=ModelConfig(path=str(sft_path)), data=DataConfig(dataset=str(dataset_path("sentiment-prompts"))),
        log=LogConfig(output_dir=str(ctx.work / name), tensorboard=False, progress=ctx.progress),
        reward=RewardSourceConfig(sources=[f"rm:{rm_path}"]), seed=ctx.seed,
        bon=best_of_n.BoNOptions(n=s["n_max"], max_prompts=s["bon_prompts"], max_new_tokens=24,
                                 eval_reward=[GOLD], save_samples=False))
    metrics = best_of_n.main(cfg)
    ks = sorted(int(k.rsplit("_", 1)[1]) for k in metrics if k.startswith("score/best_of_"))
    return {"k": ks, "d": [math.sqrt(bon_kl(k)) for k in ks], "proxy": [metrics[f"score/best_of_{k}"] for k in ks],
            "gold": [metrics[f"eval/best_of_{k}"] for k in ks]}


def ppo_curve(ctx: Context, sft_path, rm_path) -> list[dict]:
    """PPO against the proxy RM; gold, proxy and KL to the SFT policy at the start and at every checkpoint."""
    s = ctx.settings
    out = train_ppo(ctx.work / "ppo", sft_path, [f"rm:{rm_path}"], steps=s["ppo_steps"],
                    save_every=s["ppo_save_every"], seed=ctx.seed, progress=ctx.progress, critic_path=rm_path)
    reference, tokenizer = load_model(str(sft_path)), load_tokenizer(str(sft_path))
    proxy = build_reward(RewardSourceConfig(sources=[f"rm:{rm_path}"]))
    start = evaluate_policy(reference, reference, tokenizer, prompts=s["eval_prompts"], seed=ctx.seed, proxy=proxy)
    start = {"step": 0, **{k: v for k, v in start.items() if k != "samples"}}
    return [start] + checkpoint_curve(out, reference, tokenizer, prompts=s["eval_prompts"], seed=ctx.seed,
                                      proxy=proxy)


def run(ctx: Context) -> Outcome:
    s = ctx.settings
    sft_path = sft_policy(ctx.work / "sft", steps=s["sft_steps"], seed=ctx.seed, progress=ctx.progress)
    files = pair_files(ctx.work / "pairs", sft_path, train=max(s["rm_sizes"]), held_out=0, seed=ctx.seed,
                       labeler_temperature=0.05)
    rms = {n: train_rm(ctx.work / f"rm-{n}", files["train"][0.0], policy=sft_path, rows=n, epochs=s["rm_epochs"],
                       batch=16, seed=ctx.seed, progress=ctx.progress) for n in s["rm_sizes"]}
    bon = {n: best_of_n_curve(ctx, sft_path, path, f"bon-rm{n}") for n, path in rms.items()}
    largest = max(rms)
    rl = ppo_curve(ctx, sft_path, rms[largest])
    curve = bon[largest]
    bon_fit = fit_bon(curve["d"], [g - curve["gold"][0] for g in curve["gold"]])
    rl_d = [math.sqrt(max(p["kl"], 0.0)) for p in rl]
    rl_fit = fit_rl(rl_d, [p["gold"] - rl[0]["gold"] for p in rl]) if sum(d > 0 for d in rl_d) >= 2 else {}
    plots = [line_plot(ctx.out / "bon.png", {**{f"gold (RM {n} pairs)": (c["d"], c["gold"]) for n, c in bon.items()},
                                             **{f"proxy (RM {n} pairs)": (c["d"], c["proxy"]) for n, c in bon.items()}},
                       xlabel="d = sqrt(KL_bon)", ylabel="reward", title="Best-of-n against a proxy RM"),
             line_plot(ctx.out / "rl.png", {"gold": (rl_d, [p["gold"] for p in rl]),
                                            "proxy": (rl_d, [p["proxy"] for p in rl])},
                       xlabel="d = sqrt(KL to SFT)", ylabel="reward", title="PPO against a proxy RM")]
    gap = {n: (c["proxy"][-1] - c["proxy"][0]) - (c["gold"][-1] - c["gold"][0]) for n, c in bon.items()}
    checks = [Check("best-of-n raises the proxy reward with n", f"{curve['proxy'][0]:.3f} -> {curve['proxy'][-1]:.3f}",
                    curve["proxy"][-1] > curve["proxy"][0]),
              Check("the proxy gains more than the gold (overoptimization gap, whitened proxy units vs gold)",
                    f"gap {gap[largest]:.3f}", gap[largest] > 0),
              Check("R_bon(d) = d(alpha - beta d) fits the gold gain", f"alpha {bon_fit['alpha']:.3f}, beta "
                    f"{bon_fit['beta']:.3f}, R^2 {bon_fit['r2']:.2f}", bon_fit["r2"] > 0.8)]
    if rl_fit:
        checks.append(Check("R_RL(d) = d(alpha - beta log d) fits PPO's gold gain", f"alpha {rl_fit['alpha']:.3f}, "
                            f"beta {rl_fit['beta']:.3f}, R^2 {rl_fit['r2']:.2f}", rl_fit["r2"] > 0.5))
    if len(rms) > 1:
        small = min(rms)
        checks.append(Check("a proxy RM trained on more pairs is overoptimized less (smaller proxy-gold gap)",
                            f"gap {gap[small]:.3f} at {small} pairs vs {gap[largest]:.3f} at {largest}",
                            gap[largest] < gap[small]))
    numbers = {"bon": {str(n): c for n, c in bon.items()}, "rl": rl, "fit_bon": bon_fit, "fit_rl": rl_fit,
               "label_agreement_with_gold": files["label_agreement"]}
    json.dumps(numbers)  # fail here, not in the runner, if something is not JSON-able
    return Outcome(numbers, checks, plots, notes="Proxy scores are whitened RM units; gold is in [0, 1].")
