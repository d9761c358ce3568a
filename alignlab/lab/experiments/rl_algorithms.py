"""rl-algorithms: PPO, GRPO, Dr.GRPO, DAPO, RLOO, ReMax and REINFORCE++ on lab arithmetic, same budget.

A short SFT on `lab:arithmetic-sft` gives a policy that is sometimes right: on single-digit sums (level 1) its
greedy answer is right about 3 times in 4 but a sample at temperature 1 only about 1 in 4, and on two-digit
problems (levels 2-3) it is almost never right, which leaves RL no signal there; so the prompts are the
`levels` rows of `lab:arithmetic-prompts`. They are split once by row: `heldout` rows are never trained on (at
level 1 there are only 100 distinct sums, so held-out rows share sums with training rows: the measure is the
task's distribution, not unseen sums). Each algorithm trains from the SFT policy on the rest for the same steps,
prompts and samples per step (`alignlab grpo --advantage NAME` / `alignlab ppo`, each in its own process with
this process's thread count, so its wall time, CPU time and peak memory are its own), scored by exact match,
and keeps a checkpoint every `eval_every` steps. The critic-free runs take `epochs` x `minibatches` optimizer
steps per batch (default 4 x 1: as many as PPO's 4 epochs; with 1 x 1 the update noise of one Adam step per 64
samples at lr 2e-4 erases the SFT policy's thin greedy lead, see docs/lab-experiments.md).
Every checkpoint (and the SFT policy) is scored the same way on
the held-out rows: the exact match of `eval_samples` samples per prompt at temperature 1 (what RL maximizes,
the policy's own accuracy) and of the greedy answer.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from alignlab.config import DataConfig
from alignlab.data import read_rows
from alignlab.lab.datasets import dataset_path
from alignlab.lab.experiments import Check, Context, Outcome
from alignlab.lab.experiments.common import line_plot, sft_policy
from alignlab.lab.rewards import LAB_REWARDS
from alignlab.models import load_model, load_tokenizer
from alignlab.rewards import RewardSourceConfig, build_reward
from alignlab.rollout import Sampling, make_engine
from alignlab.rollout.experience import load_prompts, sample, score

PAPER = ("Schulman 2017 (PPO), Shao 2024 (GRPO), Liu 2025 (Dr.GRPO), Yu 2025 (DAPO), Ahmadian 2024 (RLOO), "
         "Li 2023 (ReMax), Hu 2025 (REINFORCE++)")
CLAIM = ("Every algorithm raises exact-match accuracy over the SFT policy; the critic-free ones match PPO at a "
         "lower cost in time and memory (no value model).")
ALGORITHMS = ["grpo", "dr_grpo", "dapo", "rloo", "remax", "reinforce_pp", "ppo"]
GOLD = f"python:alignlab.lab.rewards:{LAB_REWARDS['arithmetic-gold']}"
MAX_NEW_TOKENS = 12
SCALES = {
    "tiny": {"algorithms": ["grpo", "rloo"], "levels": [1], "sft_steps": 20, "steps": 3, "prompts": 4, "group": 4,
             "eval_every": 3, "lr": 1e-4, "heldout": 16, "eval_samples": 2, "epochs": 1, "minibatches": 1},
    "default": {"algorithms": ALGORITHMS, "levels": [1], "sft_steps": 300, "steps": 120, "prompts": 16, "group": 4,
                "eval_every": 40, "lr": 2e-4, "heldout": 100, "eval_samples": 8, "epochs": 4, "minibatches": 1},
    "large": {"algorithms": ALGORITHMS, "levels": [1], "sft_steps": 600, "steps": 120, "prompts": 64,
              "group": 4, "eval_every": 40, "lr": 2e-4, "heldout": 100, "eval_samples": 8, "epochs": 4,
              "minibatches": 4},
}


def split_prompts(ctx: Context) -> tuple[Path, Path]:
    """The arithmetic prompts of the `levels`, shuffled by the seed: `heldout` of them to `heldout.jsonl`, the
    rest to `train.jsonl` (the only prompts any algorithm trains on)."""
    rows = [r.data for r in read_rows(dataset_path("arithmetic-prompts")) if r.data["level"] in ctx.settings["levels"]]
    random.Random(ctx.seed).shuffle(rows)
    out = ctx.work / "prompts"
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.jsonl", out / "heldout.jsonl"
    for path, part in zip(paths, (rows[ctx.settings["heldout"]:], rows[:ctx.settings["heldout"]])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


def command(ctx: Context, name: str, sft_path, out, prompts: Path) -> list[str]:
    s = ctx.settings
    common = ["--model", str(sft_path), "--dataset", str(prompts), "--output-dir", str(out),
              "--max-steps", str(s["steps"]), "--seed", str(ctx.seed), "--reward.sources", GOLD,
              "--rollout.max-new-tokens", str(MAX_NEW_TOKENS), "--optim.lr", str(s["lr"]),
              "--data.eval-fraction", "0", "--log.log-every", "1", "--log.save-every", str(s["eval_every"]),
              "--log.keep-checkpoints", "0", "--log.tensorboard", "False", "--log.progress", "False"]
    if name == "ppo":  # same samples per step: PPO draws one completion for each of prompts x group prompts
        return ["ppo", *common, "--rollout.group-size", "1", "--rollout.prompts-per-step",
                str(s["prompts"] * s["group"])]
    return ["grpo", *common, "--rollout.prompts-per-step", str(s["prompts"]), "--rollout.group-size",
            str(s["group"]), "--advantage", name, "--pg.epochs", str(s["epochs"]),
            "--pg.minibatches", str(s["minibatches"])]


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


@torch.no_grad()
def exact_match(model_dir, held, tokenizer, reward, *, samples: int, seed: int) -> dict:
    """Exact match on the held-out prompts of the model in `model_dir`: mean over `samples` samples per prompt
    at temperature 1 (`sampled`) and of the greedy answer (`greedy`)."""
    engine, result = make_engine(load_model(str(model_dir)), tokenizer), {}
    for key, temperature, n in (("sampled", 1.0, samples), ("greedy", 0.0, 1)):
        rollouts, columns = sample(engine, held, range(len(held)), Sampling(max_new_tokens=MAX_NEW_TOKENS,
                                                                            temperature=temperature), n, seed=seed)
        result[key] = float(score(reward, rollouts, columns).mean())
    return result


def curve(run_dir: Path, start: dict, evaluate) -> list[dict]:
    """Held-out exact match (`evaluate(path)`) of every checkpoint of a run by step, from step 0 (`start`)."""
    paths = sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return [{"step": 0, **start}] + [{"step": int(p.name.split("-")[1]), **evaluate(p)} for p in paths]


def run(ctx: Context) -> Outcome:
    s = ctx.settings
    sft_path = sft_policy(ctx.work / "sft", steps=s["sft_steps"], seed=ctx.seed, progress=ctx.progress,
                          dataset="arithmetic-sft")
    train_prompts, held_prompts = split_prompts(ctx)
    tokenizer, reward = load_tokenizer(str(sft_path)), build_reward(RewardSourceConfig(sources=[GOLD]))
    held = load_prompts(DataConfig(dataset=str(held_prompts)), tokenizer, max_prompt_length=64)

    def evaluate(path) -> dict:
        return exact_match(path, held, tokenizer, reward, samples=s["eval_samples"], seed=ctx.seed)

    start, per_step = evaluate(sft_path), s["prompts"] * s["group"]
    results, curves = {}, {}
    for name in s["algorithms"]:
        out = ctx.work / name
        seconds, cpu_seconds, peak_mb = launch(command(ctx, name, sft_path, out, train_prompts))
        curves[name] = curve(out, start, evaluate)
        end = curves[name][-1]
        results[name] = {"accuracy_start": start["sampled"], "accuracy_end": end["sampled"],
                         "greedy_start": start["greedy"], "greedy_end": end["greedy"], "seconds": round(seconds, 1),
                         "cpu_seconds": round(cpu_seconds, 1), "peak_rss_mb": round(peak_mb)}
    plots = [line_plot(ctx.out / f"accuracy_{key}.png",
                       {n: ([p["step"] * per_step for p in c], [p[key] for p in c]) for n, c in curves.items()},
                       xlabel="completions sampled", ylabel=f"held-out exact match ({key})",
                       title="RL algorithms on lab arithmetic") for key in ("sampled", "greedy")]
    numbers = {"samples_per_step": per_step, "heldout_prompts": len(held), "sft_accuracy": start, "runs": results,
               "curves": curves}
    return Outcome(numbers, checks(results, start, len(held)), plots)


def checks(results: dict, start: dict, held: int) -> list[Check]:
    """Does every algorithm raise the held-out exact match over the SFT policy; is PPO the heaviest?"""
    improved = [n for n, r in results.items() if r["accuracy_end"] > r["accuracy_start"]]
    greedy = [n for n, r in results.items() if r["greedy_end"] > r["greedy_start"]]
    ends = ", ".join(f"{n} {r['accuracy_end']:.3f}" for n, r in results.items())
    out = [Check("algorithms that raise held-out exact match (samples at temperature 1) over the SFT policy",
                 f"{len(improved)}/{len(results)}: {', '.join(improved)} (SFT {start['sampled']:.3f}; end {ends})",
                 len(improved) == len(results)),
           Check("algorithms that raise held-out greedy exact match over the SFT policy",
                 f"{len(greedy)}/{len(results)}: {', '.join(greedy)} (SFT {start['greedy']:.3f}, {held} prompts)",
                 len(greedy) == len(results))]
    if "ppo" in results:
        free = [n for n in results if n != "ppo"]
        lighter = [n for n in free if results[n]["peak_rss_mb"] < results["ppo"]["peak_rss_mb"]]
        out.append(Check("critic-free algorithms use less peak memory than PPO",
                         f"{len(lighter)}/{len(free)} below PPO's {results['ppo']['peak_rss_mb']} MB",
                         len(lighter) == len(free)))
    return out
