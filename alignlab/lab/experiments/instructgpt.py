"""instructgpt (Ouyang et al. 2022): SFT -> reward model -> PPO, each stage scored by the gold reward.

The lab tiny base model is fine-tuned on demonstrations (`lab:sentiment-sft`); pairs of the SFT policy's
samples, labelled by the simulated labeler, train a Bradley-Terry reward model; PPO optimizes the SFT policy
against that RM (critic initialized from the RM, KL penalty to the SFT policy). Each stage's samples are scored
by the programmatic gold reward the labeler only saw through noisy comparisons.
"""

from __future__ import annotations

from alignlab.lab.base import tiny_model_path
from alignlab.lab.experiments import Check, Context, Outcome
from alignlab.lab.experiments.common import evaluate_policy, line_plot, pair_files, sft_policy, train_ppo, train_rm
from alignlab.models import load_model, load_tokenizer
from alignlab.recipes import reward_eval

PAPER = "Ouyang et al. 2022, Training language models to follow instructions with human feedback (arXiv:2203.02155)"
CLAIM = "PPO against a learned reward model lifts the (gold) quality over the SFT policy, which lifts it over the base."
SCALES = {
    "tiny": {"sft_steps": 20, "pairs": 48, "heldout": 24, "rm_epochs": 1, "rm_batch": 16, "rm_warmup": 0,
             "ppo_steps": 3, "eval_prompts": 16},
    "default": {"sft_steps": 150, "pairs": 1024, "heldout": 256, "rm_epochs": 4, "rm_batch": 32, "rm_warmup": 5,
                "ppo_steps": 60, "eval_prompts": 128},
    "large": {"sft_steps": 300, "pairs": 4096, "heldout": 512, "rm_epochs": 4, "rm_batch": 32, "rm_warmup": 5,
              "ppo_steps": 200, "eval_prompts": 512},
}


def run(ctx: Context) -> Outcome:
    s = ctx.settings
    base_path = tiny_model_path()
    base, tokenizer = load_model(str(base_path)), load_tokenizer(str(base_path))
    sft_path = sft_policy(ctx.work / "sft", steps=s["sft_steps"], seed=ctx.seed, progress=ctx.progress)
    sft = load_model(str(sft_path))
    files = pair_files(ctx.work / "pairs", sft_path, train=s["pairs"], held_out=s["heldout"], seed=ctx.seed,
                       labeler_temperature=0.05)
    rm = train_rm(ctx.work / "rm", files["train"][0.0], policy=sft_path, rows=None, epochs=s["rm_epochs"],
                  batch=s["rm_batch"], warmup_steps=s["rm_warmup"], seed=ctx.seed, progress=ctx.progress)
    rm_accuracy = reward_eval.main(reward_eval.RewardEvalConfig(model=str(rm), dataset=str(files["heldout"]),
                                                                max_length=64))["accuracy"]
    ppo_dir = train_ppo(ctx.work / "ppo", sft_path, [f"rm:{rm}"], steps=s["ppo_steps"], save_every=0,
                        seed=ctx.seed, progress=ctx.progress, critic_path=rm)
    kw = dict(prompts=s["eval_prompts"], seed=ctx.seed)
    stages = {"base": evaluate_policy(base, sft, tokenizer, **kw), "sft": evaluate_policy(sft, sft, tokenizer, **kw),
              "ppo": evaluate_policy(load_model(str(ppo_dir)), sft, tokenizer, **kw)}
    gold = {k: v["gold"] for k, v in stages.items()}
    plots = [line_plot(ctx.out / "stages.png", {"gold reward": ([0, 1, 2], list(gold.values()))},
                       xlabel="stage (0 base, 1 SFT, 2 PPO)", ylabel="mean gold reward", title="SFT -> RM -> PPO")]
    checks = [Check("SFT beats the base model", f"{gold['sft']:.3f} vs {gold['base']:.3f}", gold["sft"] > gold["base"]),
              Check("PPO beats SFT", f"{gold['ppo']:.3f} vs {gold['sft']:.3f} (KL to SFT {stages['ppo']['kl']:.2f})",
                    gold["ppo"] > gold["sft"]),
              Check("the RM agrees with the gold preferences on held-out pairs", f"accuracy {rm_accuracy:.3f}",
                    rm_accuracy > 0.6)]
    numbers = {"stages": stages, "rm_heldout_accuracy": rm_accuracy,
               "label_agreement_with_gold": files["label_agreement"]}
    return Outcome(numbers, checks, plots)
