"""pm-vs-imitation (Askell et al. 2021): ranked preference modeling vs binary discrimination vs imitation.

Pairs of the lab tiny base model's completions are labelled by the simulated labeler; three reward models
learn from the first N of them: Bradley-Terry preference modeling (`rm.objective bradley_terry`), binary
discrimination of good vs bad completions (`binary`: the pairs unpaired) and imitation learning (`imitation`:
an LM on the preferred completions, scored by mean log-prob). Each is scored on held-out pairs labelled by
the gold reward, and picks the best of k samples per prompt (acc@k, the unbiased estimator).
"""

from __future__ import annotations

import torch

from alignlab.data import normalize, tokenize_sft
from alignlab.eval.reward import best_of_n_curve
from alignlab.lab.base import tiny_model_path
from alignlab.lab.experiments import Check, Context, Outcome
from alignlab.lab.experiments.common import line_plot, pair_files, train_rm
from alignlab.lab.tasks import sentiment
from alignlab.models import load_model, load_tokenizer
from alignlab.recipes import reward_eval
from alignlab.rollout import Sampling, make_engine

PAPER = "Askell et al. 2021, A General Language Assistant as a Laboratory for Alignment (arXiv:2112.00861), §4"
CLAIM = ("Ranked preference modeling learns from comparisons better than imitation learning, and is at least as "
         "good as binary discrimination; its accuracy grows with the number of comparisons.")
OBJECTIVES = {"bradley_terry": "preference model", "binary": "binary discrimination", "imitation": "imitation"}
SCALES = {
    "tiny": {"sizes": [32], "epochs": 1, "heldout": 32, "acc_prompts": 8, "acc_samples": 4, "batch": 16},
    "default": {"sizes": [64, 256, 1024, 4096], "epochs": 2, "heldout": 1024, "acc_prompts": 128,
                "acc_samples": 8, "batch": 16},
    "large": {"sizes": [64, 256, 1024, 4096, 16384], "epochs": 2, "heldout": 2048, "acc_prompts": 256,
              "acc_samples": 16, "batch": 16},
}


def train(ctx: Context, objective: str, data, n: int) -> str:
    s = ctx.settings
    return str(train_rm(ctx.work / f"{objective}-{n}", data, policy=tiny_model_path(), rows=n, epochs=s["epochs"],
                        batch=s["batch"], seed=ctx.seed, progress=ctx.progress, objective=objective,
                        lr=3e-4 if objective == "imitation" else 1e-3))


def samples_per_prompt(ctx: Context) -> tuple[list[dict], torch.Tensor]:
    """`acc_samples` completions of the base model for each of `acc_prompts` prompts: SFT-style rows
    (prompt-major) and their gold rewards (P, N)."""
    s, base = ctx.settings, str(tiny_model_path())
    model, tokenizer = load_model(base), load_tokenizer(base)
    prompts = sentiment.prompts(s["acc_prompts"], seed=ctx.seed + 30_000)
    rollouts = make_engine(model, tokenizer).generate(prompts, s["acc_samples"], Sampling(max_new_tokens=24),
                                                      seed=ctx.seed)
    gold = sentiment.gold_reward([p + c for p, c in zip(rollouts.prompts, rollouts.completions)])
    # a blank completion (EOS at once) gets a neutral "." so the row is valid; its gold reward is the blank's
    rows = [{"prompt": p, "completion": c if c.strip() else "."}
            for p, c in zip(rollouts.prompts, rollouts.completions)]
    feats, _ = tokenize_sft(normalize(rows, "sft"), tokenizer, max_length=64)
    return feats, torch.tensor(gold).view(len(prompts), -1)


def run(ctx: Context) -> Outcome:
    s = ctx.settings
    files = pair_files(ctx.work / "pairs", tiny_model_path(), train=max(s["sizes"]), held_out=s["heldout"],
                       seed=ctx.seed, labeler_temperature=0.05)
    feats, gold = samples_per_prompt(ctx)
    accuracy, curves = {o: [] for o in OBJECTIVES}, {}
    for objective in OBJECTIVES:
        for n in s["sizes"]:
            path = train(ctx, objective, files["train"][0.0], n)
            metrics = reward_eval.main(reward_eval.RewardEvalConfig(model=path, dataset=str(files["heldout"]),
                                                                    max_length=64))
            accuracy[objective].append(metrics["accuracy"])
        model, score_fn = reward_eval.load_scorer(path)
        scores = reward_eval.score_rows(score_fn, feats, model.config.pad_token_id or 0, batch_size=32)
        curves[objective] = best_of_n_curve(scores[:, 0].view_as(gold), gold)
    largest = {o: a[-1] for o, a in accuracy.items()}
    plots = [line_plot(ctx.out / "accuracy.png", {OBJECTIVES[o]: (s["sizes"], a) for o, a in accuracy.items()},
                       xlabel="training comparisons", ylabel="held-out accuracy vs gold", title="Askell 2021 §4",
                       logx=True),
             line_plot(ctx.out / "acc_at_k.png", {**{OBJECTIVES[o]: (c["k"], c["rm"]) for o, c in curves.items()},
                                                  "oracle": (curves["binary"]["k"], curves["binary"]["oracle"])},
                       xlabel="k", ylabel="mean gold reward of the pick", title="best of k (acc@k)")]
    pm, imitation, binary = largest["bradley_terry"], largest["imitation"], largest["binary"]
    checks = [Check("preference modeling beats imitation learning", f"{pm:.3f} vs {imitation:.3f}", pm > imitation),
              Check("preference modeling is at least as good as binary discrimination",
                    f"{pm:.3f} vs {binary:.3f}", pm >= binary - 0.02),
              Check("the preference model's best-of-k pick improves on a random pick",
                    f"acc@{curves['bradley_terry']['k'][-1]} {curves['bradley_terry']['rm'][-1]:.3f} vs "
                    f"random {curves['bradley_terry']['random']:.3f}",
                    curves["bradley_terry"]["rm"][-1] > curves["bradley_terry"]["random"])]
    if len(s["sizes"]) > 1:
        first = accuracy["bradley_terry"][0]
        checks.append(Check("preference-model accuracy grows with comparisons",
                            f"{first:.3f} at {s['sizes'][0]} -> {pm:.3f} at {s['sizes'][-1]}", pm > first))
    numbers = {"sizes": s["sizes"], "accuracy": accuracy, "acc_at_k": curves,
               "label_agreement_with_gold": files["label_agreement"]}
    return Outcome(numbers, checks, plots)
