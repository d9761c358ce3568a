"""overoptimization (Gao et al. 2022): optimizing a proxy reward model, the gold reward first rises then falls.

The proxy is a reward model trained on simulated-labeler pairs of the SFT policy's samples; the lab's gold
sentiment reward plays the "gold RM". Best-of-n (selected by the proxy, n = 1 .. n_max, unbiased estimates
from one set of samples, KL = log n - (n-1)/n) and PPO against the proxy (gold and proxy of each checkpoint's
samples, KL to the SFT policy) are plotted against d = sqrt(KL) and fitted with the paper's functional forms.
Proxy RMs trained on fewer and more comparisons show how the proxy-gold gap depends on the RM's data; PPO runs
against each proxy in `ppo_rms` with a near-zero KL penalty (Gao's RL runs mostly used none), long enough to look
for the gold reward's turn-over.
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
    "tiny": {"sft_steps": 20, "rm_sizes": [32], "labeler_temperature": 0.05, "rm_epochs": 1, "rm_batch": 16,
             "rm_warmup": 0, "n_max": 4, "bon_prompts": 8, "ppo_rms": [32], "ppo_steps": 4, "ppo_save_every": 2,
             "ppo_kl_coef": 0.01, "eval_prompts": 16},
    "default": {"sft_steps": 150, "rm_sizes": [64, 1024], "labeler_temperature": 0.05, "rm_epochs": 4,
                "rm_batch": 32, "rm_warmup": 5, "n_max": 64, "bon_prompts": 64, "ppo_rms": [64, 1024],
                "ppo_steps": 150, "ppo_save_every": 15, "ppo_kl_coef": 0.001, "eval_prompts": 96},
    "large": {"sft_steps": 300, "rm_sizes": [64, 256, 2048], "labeler_temperature": 0.05, "rm_epochs": 4,
              "rm_batch": 32, "rm_warmup": 5, "n_max": 256, "bon_prompts": 128, "ppo_rms": [64, 256, 2048],
              "ppo_steps": 300, "ppo_save_every": 20, "ppo_kl_coef": 0.001, "eval_prompts": 256},
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


def ppo_curve(ctx: Context, sft_path, rm_path, name: str) -> list[dict]:
    """PPO against the proxy RM; gold, proxy and KL to the SFT policy at the start and at every checkpoint."""
    s = ctx.settings
    out = train_ppo(ctx.work / name, sft_path, [f"rm:{rm_path}"], steps=s["ppo_steps"],
                    save_every=s["ppo_save_every"], seed=ctx.seed, progress=ctx.progress, critic_path=rm_path,
                    kl_coef=s["ppo_kl_coef"])
    reference, tokenizer = load_model(str(sft_path)), load_tokenizer(str(sft_path))
    proxy = build_reward(RewardSourceConfig(sources=[f"rm:{rm_path}"]))
    start = evaluate_policy(reference, reference, tokenizer, prompts=s["eval_prompts"], seed=ctx.seed, proxy=proxy)
    start = {"step": 0, **{k: v for k, v in start.items() if k != "samples"}}
    return [start] + checkpoint_curve(out, reference, tokenizer, prompts=s["eval_prompts"], seed=ctx.seed,
                                      proxy=proxy)


def rl_runs(ctx: Context, sft_path, rms: dict) -> dict:
    """PPO against each proxy RM in `ppo_rms`: its curve, d = sqrt(KL), the R_RL fit, peak and final gold."""
    runs = {}
    for n in ctx.settings["ppo_rms"]:
        curve = ppo_curve(ctx, sft_path, rms[n], f"ppo-rm{n}")
        d = [math.sqrt(max(p["kl"], 0.0)) for p in curve]
        gain = [p["gold"] - curve[0]["gold"] for p in curve]
        fit = fit_rl(d, gain) if sum(x > 0 for x in d) >= 2 else {}
        peak = max(range(len(curve)), key=lambda i: curve[i]["gold"])
        runs[n] = {"curve": curve, "d": d, "fit_rl": fit, "peak_gold": curve[peak]["gold"], "peak_d": d[peak],
                   "final_gold": curve[-1]["gold"], "final_d": d[-1]}
    return runs


def rl_checks(rl: dict) -> list[Check]:
    """Gao's RL claims per proxy: R_RL fits the gold gain, and the gold turns down while the proxy still rises."""
    checks = []
    for n, r in rl.items():
        if r["fit_rl"]:
            f = r["fit_rl"]
            checks.append(Check(f"R_RL(d) = d(alpha - beta log d) fits PPO's gold gain (proxy RM {n} pairs)",
                                f"alpha {f['alpha']:.3f}, beta {f['beta']:.3f}, R^2 {f['r2']:.2f}", f["r2"] > 0.5))
        fall = r["peak_gold"] - r["final_gold"]
        checks.append(Check(f"PPO's gold turns down as the proxy keeps rising (proxy RM {n} pairs; a fall of more "
                            "than 0.05, about 2 standard errors)",
                            f"peak {r['peak_gold']:.3f} at d {r['peak_d']:.2f}, final {r['final_gold']:.3f} at d "
                            f"{r['final_d']:.2f}", fall > 0.05))
    return checks


def data_size_checks(bon: dict, gap: dict) -> list[Check]:
    """Gao's data-size claim, two ways: the proxy-gold gap (each proxy in its own whitened units, so a weak RM's
    smaller score spread shrinks its gap) and the gold gained at the same KL (best-of-n_max)."""
    small, large = min(bon), max(bon)
    gold_gain = {n: c["gold"][-1] - c["gold"][0] for n, c in bon.items()}
    n_max = bon[large]["k"][-1]
    return [Check("a proxy RM trained on more pairs is overoptimized less (smaller proxy-gold gap; each proxy in its "
                  "own whitened units)", f"gap {gap[small]:.3f} at {small} pairs vs {gap[large]:.3f} at {large}",
                  gap[large] < gap[small]),
            Check(f"at the same KL (best-of-{n_max}), the proxy RM trained on more pairs gains more gold",
                  f"gold {gold_gain[large]:+.3f} at {large} pairs vs {gold_gain[small]:+.3f} at {small}",
                  gold_gain[large] > gold_gain[small])]


def run(ctx: Context) -> Outcome:
    s = ctx.settings
    sft_path = sft_policy(ctx.work / "sft", steps=s["sft_steps"], seed=ctx.seed, progress=ctx.progress)
    files = pair_files(ctx.work / "pairs", sft_path, train=max(s["rm_sizes"]), held_out=0, seed=ctx.seed,
                       labeler_temperature=s["labeler_temperature"])
    rms = {n: train_rm(ctx.work / f"rm-{n}", files["train"][0.0], policy=sft_path, rows=n, epochs=s["rm_epochs"],
                       batch=s["rm_batch"], warmup_steps=s["rm_warmup"], seed=ctx.seed, progress=ctx.progress)
           for n in s["rm_sizes"]}
    bon = {n: best_of_n_curve(ctx, sft_path, path, f"bon-rm{n}") for n, path in rms.items()}
    rl = rl_runs(ctx, sft_path, rms)
    largest = max(rms)
    curve = bon[largest]
    bon_fit = fit_bon(curve["d"], [g - curve["gold"][0] for g in curve["gold"]])
    plots = [line_plot(ctx.out / "bon.png", {**{f"gold (RM {n} pairs)": (c["d"], c["gold"]) for n, c in bon.items()},
                                             **{f"proxy (RM {n} pairs)": (c["d"], c["proxy"]) for n, c in bon.items()}},
                       xlabel="d = sqrt(KL_bon)", ylabel="reward", title="Best-of-n against a proxy RM"),
             line_plot(ctx.out / "rl.png", {**{f"gold (RM {n} pairs)": (r["d"], [p["gold"] for p in r["curve"]])
                                               for n, r in rl.items()},
                                            **{f"proxy (RM {n} pairs)": (r["d"], [p["proxy"] for p in r["curve"]])
                                               for n, r in rl.items()}},
                       xlabel="d = sqrt(KL to SFT)", ylabel="reward", title="PPO against a proxy RM")]
    gap = {n: (c["proxy"][-1] - c["proxy"][0]) - (c["gold"][-1] - c["gold"][0]) for n, c in bon.items()}
    checks = [Check("best-of-n raises the proxy reward with n", f"{curve['proxy'][0]:.3f} -> {curve['proxy'][-1]:.3f}",
                    curve["proxy"][-1] > curve["proxy"][0]),
              Check("the proxy gains more than the gold (overoptimization gap, whitened proxy units vs gold)",
                    f"gap {gap[largest]:.3f}", gap[largest] > 0),
              Check("R_bon(d) = d(alpha - beta d) fits the gold gain", f"alpha {bon_fit['alpha']:.3f}, beta "
                    f"{bon_fit['beta']:.3f}, R^2 {bon_fit['r2']:.2f}", bon_fit["r2"] > 0.8)]
    checks += rl_checks(rl)
    checks += data_size_checks(bon, gap) if len(rms) > 1 else []
    numbers = {"bon": {str(n): c for n, c in bon.items()}, "rl": {str(n): r for n, r in rl.items()},
               "fit_bon": bon_fit, "label_agreement_with_gold": files["label_agreement"]}
    json.dumps(numbers)  # fail here, not in the runner, if something is not JSON-able
    return Outcome(numbers, checks, plots, notes="Proxy scores are whitened RM units; gold is in [0, 1].")
