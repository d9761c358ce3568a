"""preference-losses: the DPO family on the same sentiment pairs, with 0%, 20% and 40% of labels flipped.

An SFT policy's completion pairs are labelled by the simulated labeler; a copy of each pair file has a share
of its labels flipped. Every loss trains from the SFT policy on every file with the same steps and batch;
each result is scored by the gold reward of fresh samples, with KL to the SFT policy and the drift of the
chosen and rejected log-probs over training (likelihood displacement: both often fall).
"""

from __future__ import annotations

from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig
from alignlab.lab.experiments import Check, Context, Outcome
from alignlab.lab.experiments.common import evaluate_policy, line_plot, metrics, pair_files, sft_policy
from alignlab.models import load_model, load_tokenizer
from alignlab.recipes import preference

PAPER = ("Rafailov 2023 (DPO), Azar 2023 (IPO), Mitchell 2023 (cDPO), Chowdhury 2024 (rDPO), Ethayarajh 2024 "
         "(KTO), Hong 2024 (ORPO), Meng 2024 (SimPO), Xu 2024 (CPO)")
CLAIM = ("Each loss raises the gold reward over the SFT policy on clean labels; label noise hurts plain DPO, and "
         "the noise-aware losses (cDPO, rDPO) lose less of their gain at 40% flipped labels.")
LOSSES = {"dpo": {}, "ipo": {"beta": 0.5}, "cdpo": {"label_smoothing": 0.2}, "robust": {"label_smoothing": 0.2},
          "kto": {}, "orpo": {}, "simpo": {"beta": 2.0}, "cpo": {}}
"""Loss -> options that differ from the defaults (IPO's beta is its tau; cDPO/rDPO assume 20% noise)."""
SCALES = {
    "tiny": {"losses": ["dpo", "ipo"], "noise": [0.0, 0.4], "sft_steps": 20, "pairs": 64, "steps": 4, "batch": 8,
             "lr": 5e-4, "eval_prompts": 16},
    "default": {"losses": list(LOSSES), "noise": [0.0, 0.2, 0.4], "sft_steps": 150, "pairs": 1024, "steps": 64,
                "batch": 16, "lr": 5e-4, "eval_prompts": 384},
    "large": {"losses": list(LOSSES), "noise": [0.0, 0.2, 0.4], "sft_steps": 300, "pairs": 2048, "steps": 160,
              "batch": 16, "lr": 5e-4, "eval_prompts": 512},
}


def train(ctx: Context, loss: str, data, sft_path) -> str:
    s, out = ctx.settings, ctx.work / f"{loss}-{data.stem}"
    cfg = preference.PreferenceConfig(
        model=ModelConfig(path=str(sft_path)),
        data=DataConfig(dataset=str(data), max_length=64, eval_fraction=0.0),
        optim=OptimConfig(lr=s["lr"], batch_size=s["batch"], max_steps=s["steps"], warmup_steps=2),
        log=LogConfig(output_dir=str(out), log_every=max(1, s["steps"] // 10), save_every=0, tensorboard=False,
                      progress=ctx.progress),
        pref=preference.PreferenceOptions(loss=loss, **LOSSES[loss]), seed=ctx.seed)
    preference.main(cfg)
    return str(out)


def drift(run_dir) -> dict:
    """Chosen/rejected mean log-prob at the first and last logged step (NaN when the loss logs none)."""
    lines = [m for m in metrics(run_dir) if "logps/chosen" in m]
    if not lines:
        return {"chosen": float("nan"), "rejected": float("nan")}
    return {side: lines[-1][f"logps/{side}"] - lines[0][f"logps/{side}"] for side in ("chosen", "rejected")}


def noise_checks(table: dict, gain: dict, s: dict) -> list[Check]:
    """At each noisy rate, do IPO and the noise-aware losses lose less of their clean gain than DPO; and does
    DPO's chosen log-prob fall over training on clean labels (likelihood displacement)?"""
    clean, checks = min(s["noise"]), []
    for rate in [r for r in s["noise"] if r > clean]:
        for robust in [loss for loss in ("ipo", "cdpo", "robust") if loss in s["losses"]]:
            lost = {k: gain[f"{k}@{clean:g}"] - gain[f"{k}@{rate:g}"] for k in ("dpo", robust)}
            checks.append(Check(f"{robust} loses less gold reward to {rate:.0%} noise than DPO",
                                f"{lost[robust]:.3f} vs {lost['dpo']:.3f}", lost[robust] < lost["dpo"]))
    dpo_drift = table[f"dpo@{clean:g}"]["drift"]
    checks.append(Check("DPO lowers the chosen completions' log-prob (likelihood displacement)",
                        f"chosen {dpo_drift['chosen']:+.2f}, rejected {dpo_drift['rejected']:+.2f} nats per sequence",
                        dpo_drift["chosen"] < 0))
    return checks


def run(ctx: Context) -> Outcome:
    s = ctx.settings
    sft_path = sft_policy(ctx.work / "sft", steps=s["sft_steps"], seed=ctx.seed, progress=ctx.progress)
    files = pair_files(ctx.work / "pairs", sft_path, train=s["pairs"], held_out=0, seed=ctx.seed,
                       labeler_temperature=0.05, flip_rates=tuple(s["noise"]))
    sft_model, tokenizer = load_model(str(sft_path)), load_tokenizer(str(sft_path))
    base = evaluate_policy(sft_model, sft_model, tokenizer, prompts=s["eval_prompts"], seed=ctx.seed)
    table = {}
    for loss in s["losses"]:
        for rate in s["noise"]:
            path = train(ctx, loss, files["train"][rate], sft_path)
            result = evaluate_policy(load_model(path), sft_model, tokenizer, prompts=s["eval_prompts"], seed=ctx.seed)
            table[f"{loss}@{rate:g}"] = {"loss": loss, "noise": rate, "gold": result["gold"], "kl": result["kl"],
                                         "drift": drift(path)}
    gain = {k: v["gold"] - base["gold"] for k, v in table.items()}
    clean, noisy = min(s["noise"]), max(s["noise"])
    plots = [line_plot(ctx.out / "gold_vs_noise.png",
                       {loss: (s["noise"], [table[f"{loss}@{r:g}"]["gold"] for r in s["noise"]])
                        for loss in s["losses"]},
                       xlabel="share of flipped labels", ylabel="mean gold reward", title="Preference losses")]
    improved = [loss for loss in s["losses"] if gain[f"{loss}@{clean:g}"] > 0]
    checks = [Check("losses that raise gold reward over SFT on clean labels", f"{len(improved)}/{len(s['losses'])}: "
                    f"{', '.join(improved)} (SFT {base['gold']:.3f})", len(improved) > len(s["losses"]) / 2),
              Check("label noise lowers DPO's gold reward",
                    f"{table[f'dpo@{clean:g}']['gold']:.3f} clean vs {table[f'dpo@{noisy:g}']['gold']:.3f} at "
                    f"{noisy:.0%}", table[f"dpo@{clean:g}"]["gold"] > table[f"dpo@{noisy:g}"]["gold"])]
    checks += noise_checks(table, gain, s)
    numbers = {"sft_gold": base["gold"], "runs": table, "label_agreement_with_gold": files["label_agreement"]}
    return Outcome(numbers, checks, plots)
