"""rm-ensembles (Coste et al. 2023): PPO against one reward model vs an ensemble (mean, min, mean - lam*std).

A single-head RM and a K-head ensemble RM (heads on a shared backbone, `rm.ensemble_size`) learn from the same
labelled pairs of the SFT policy's samples. PPO optimizes the SFT policy against each (`reward.combine` picks
how the ensemble's heads become one score); every checkpoint is scored by the gold reward. Reported: the best
gold reward each run reaches, where (KL) it peaks, and the gold at the end (how far it falls from the peak).
The default RMs learn from only 128 pairs: from 512, PPO's gold still rises at 60 steps (KL ~30), there being
nothing to overoptimize yet; the weaker proxy is what lets the gold turn down within the budget.
"""

from __future__ import annotations

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
from alignlab.models import load_model, load_tokenizer

PAPER = "Coste et al. 2023, Reward Model Ensembles Help Mitigate Overoptimization (arXiv:2310.02743)"
CLAIM = ("Conservative ensemble objectives (worst-case min, uncertainty-weighted mean - lam*std) overoptimize "
         "less than a single RM: the gold reward falls less (or not at all) late in PPO training.")
RUNS = {"single": ("single", "sum"), "mean": ("ensemble", "mean"), "min": ("ensemble", "min"),
        "mean_minus_std": ("ensemble", "mean_minus_std")}
"""Run -> (which RM, reward.combine)."""
SCALES = {
    "tiny": {"runs": ["single", "min"], "sft_steps": 20, "pairs": 32, "rm_epochs": 1, "heads": 2, "ppo_steps": 2,
             "save_every": 1, "eval_prompts": 16},
    "default": {"runs": list(RUNS), "sft_steps": 150, "pairs": 128, "rm_epochs": 2, "heads": 4, "ppo_steps": 100,
                "save_every": 10, "eval_prompts": 192},
    "large": {"runs": list(RUNS), "sft_steps": 300, "pairs": 2048, "rm_epochs": 2, "heads": 5, "ppo_steps": 200,
              "save_every": 20, "eval_prompts": 256},
}


def run(ctx: Context) -> Outcome:
    s = ctx.settings
    sft_path = sft_policy(ctx.work / "sft", steps=s["sft_steps"], seed=ctx.seed, progress=ctx.progress)
    files = pair_files(ctx.work / "pairs", sft_path, train=s["pairs"], held_out=0, seed=ctx.seed,
                       labeler_temperature=0.1)
    kw = dict(policy=sft_path, rows=None, epochs=s["rm_epochs"], batch=16, seed=ctx.seed, progress=ctx.progress)
    rms = {"single": train_rm(ctx.work / "rm-single", files["train"][0.0], **kw),
           "ensemble": train_rm(ctx.work / "rm-ensemble", files["train"][0.0], ensemble_size=s["heads"], **kw)}
    sft, tokenizer = load_model(str(sft_path)), load_tokenizer(str(sft_path))
    start = evaluate_policy(sft, sft, tokenizer, prompts=s["eval_prompts"], seed=ctx.seed)
    curves, summary = {}, {}
    for name in s["runs"]:
        which, combine = RUNS[name]
        out = train_ppo(ctx.work / f"ppo-{name}", sft_path, [f"rm:{rms[which]}"], steps=s["ppo_steps"],
                        save_every=s["save_every"], seed=ctx.seed, progress=ctx.progress, combine=combine,
                        critic_path=rms["single"])
        points = [{"step": 0, "gold": start["gold"], "kl": 0.0}]
        points += checkpoint_curve(out, sft, tokenizer, prompts=s["eval_prompts"], seed=ctx.seed)
        peak = max(points, key=lambda p: p["gold"])
        curves[name] = points
        summary[name] = {"peak_gold": peak["gold"], "peak_kl": peak["kl"], "final_gold": points[-1]["gold"],
                         "final_kl": points[-1]["kl"], "fall": peak["gold"] - points[-1]["gold"]}
    plots = [line_plot(ctx.out / "gold_vs_kl.png", {n: ([p["kl"] for p in c], [p["gold"] for p in c])
                                                    for n, c in curves.items()},
                       xlabel="KL to SFT", ylabel="mean gold reward", title="PPO: single RM vs ensembles")]
    conservative = [n for n in ("min", "mean_minus_std") if n in summary]
    single = summary["single"]
    checks = [Check("PPO against the single RM overoptimizes: gold falls from its peak by the end",
                    f"peak {single['peak_gold']:.3f} at KL {single['peak_kl']:.2f} -> {single['final_gold']:.3f} "
                    f"at KL {single['final_kl']:.2f}", single["fall"] > 0)]
    for n in conservative:
        checks += [Check(f"{n} ends at least as high in gold reward as the single RM",
                         f"{summary[n]['final_gold']:.3f} vs {single['final_gold']:.3f}",
                         summary[n]["final_gold"] >= single["final_gold"]),
                   Check(f"{n} falls less from its gold peak than the single RM",
                         f"{summary[n]['fall']:.3f} vs {single['fall']:.3f}", summary[n]["fall"] <= single["fall"])]
    return Outcome({"sft_gold": start["gold"], "runs": summary, "curves": curves}, checks, plots)
