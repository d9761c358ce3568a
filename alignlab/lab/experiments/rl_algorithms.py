"""rl-algorithms: PPO, GRPO, Dr.GRPO, DAPO, RLOO, ReMax and REINFORCE++ on lab arithmetic, same budget.

A short SFT on `lab:arithmetic-sft` gives a policy that is sometimes right. Each algorithm then trains from it
for the same number of steps, prompts and samples per step (`alignlab grpo --advantage NAME` / `alignlab
ppo`, each in its own process so its wall time and peak memory are its own), scored by exact match. The held-out
greedy accuracy (`eval_score`, logged every `eval_every` steps) is plotted against samples drawn.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import torch

from alignlab.lab.datasets import dataset_path
from alignlab.lab.experiments import Check, Context, Outcome
from alignlab.lab.experiments.common import line_plot, metrics, sft_policy
from alignlab.lab.rewards import LAB_REWARDS

PAPER = ("Schulman 2017 (PPO), Shao 2024 (GRPO), Liu 2025 (Dr.GRPO), Yu 2025 (DAPO), Ahmadian 2024 (RLOO), "
         "Li 2023 (ReMax), Hu 2025 (REINFORCE++)")
CLAIM = ("Every algorithm raises exact-match accuracy over the SFT policy; the critic-free ones match PPO at a "
         "lower cost in time and memory (no value model).")
ALGORITHMS = ["grpo", "dr_grpo", "dapo", "rloo", "remax", "reinforce_pp", "ppo"]
GOLD = f"python:alignlab.lab.rewards:{LAB_REWARDS['arithmetic-gold']}"
SCALES = {
    "tiny": {"algorithms": ["grpo", "rloo"], "sft_steps": 20, "steps": 3, "prompts": 4, "group": 4,
             "eval_every": 3, "lr": 1e-4},
    "default": {"algorithms": ALGORITHMS, "sft_steps": 300, "steps": 40, "prompts": 8, "group": 4,
                "eval_every": 10, "lr": 5e-5},
    "large": {"algorithms": ALGORITHMS, "sft_steps": 600, "steps": 150, "prompts": 16, "group": 8,
              "eval_every": 25, "lr": 5e-5},
}


def command(ctx: Context, name: str, sft_path, out) -> list[str]:
    s = ctx.settings
    common = ["--model", str(sft_path), "--dataset", str(dataset_path("arithmetic-prompts")), "--output-dir", str(out),
              "--max-steps", str(s["steps"]), "--seed", str(ctx.seed), "--reward.sources", GOLD,
              "--rollout.prompts-per-step", str(s["prompts"]), "--rollout.max-new-tokens", "12",
              "--optim.lr", str(s["lr"]), "--data.eval-fraction", "0.05", "--log.eval-every", str(s["eval_every"]),
              "--log.log-every", "1", "--log.save-every", "0", "--log.tensorboard", "False",
              "--log.progress", "False"]
    if name == "ppo":  # same samples per step: PPO draws one completion for each of prompts x group prompts
        return ["ppo", *common, "--rollout.group-size", "1", "--rollout.prompts-per-step",
                str(s["prompts"] * s["group"])]
    return ["grpo", *common, "--rollout.group-size", str(s["group"]), "--advantage", name]


def launch(args: list[str]) -> tuple[float, float, float]:
    """Run `alignlab ARGS` in a fresh process with this process's torch thread count; (wall seconds, its CPU
    seconds, its peak RSS in MB). Raises if it fails."""
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "alignlab.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"alignlab {' '.join(args[:1])} failed ({proc.returncode}):\n{err[-2000:]}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def run(ctx: Context) -> Outcome:
    s = ctx.settings
    sft_path = sft_policy(ctx.work / "sft", steps=s["sft_steps"], seed=ctx.seed, progress=ctx.progress,
                          dataset="arithmetic-sft")
    per_step = s["prompts"] * s["group"]
    results, curves = {}, {}
    for name in s["algorithms"]:
        out = ctx.work / name
        seconds, cpu_seconds, peak_mb = launch(command(ctx, name, sft_path, out))
        evals = [m for m in metrics(out) if "eval_score" in m]
        curves[name] = ([m["step"] * per_step for m in evals], [m["eval_score"] for m in evals])
        results[name] = {"accuracy_start": evals[0]["eval_score"], "accuracy_end": evals[-1]["eval_score"],
                         "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
                         "peak_rss_mb": round(peak_mb)}
    plots = [line_plot(ctx.out / "accuracy.png", curves, xlabel="completions sampled",
                       ylabel="held-out exact match (greedy)", title="RL algorithms on lab arithmetic")]
    start = results[s["algorithms"][0]]["accuracy_start"]
    improved = [n for n, r in results.items() if r["accuracy_end"] > r["accuracy_start"]]
    checks = [Check("algorithms that raise held-out accuracy over the SFT policy",
                    f"{len(improved)}/{len(results)}: {', '.join(improved)} (SFT {start:.3f})",
                    len(improved) > len(results) / 2)]
    if "ppo" in results:
        free = [n for n in results if n != "ppo"]
        lighter = [n for n in free if results[n]["peak_rss_mb"] < results["ppo"]["peak_rss_mb"]]
        checks.append(Check("critic-free algorithms use less peak memory than PPO",
                            f"{len(lighter)}/{len(free)} below PPO's {results['ppo']['peak_rss_mb']} MB",
                            len(lighter) == len(free)))
    return Outcome({"samples_per_step": per_step, "runs": results}, checks, plots)
