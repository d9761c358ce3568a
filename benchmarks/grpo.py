"""GRPO speed and memory: `alignlab grpo` (its Python API) against TRL's `GRPOTrainer` (transformers generate, no
vLLM), same models, prompts, reward function and settings.

Run (from the repository root; needs `pip install -e ".[bench]"`):
    python benchmarks/grpo.py                              # tiny, 3 repeats
    python benchmarks/grpo.py --models tiny,small          # also the 47M model (slow on 2 cores)
    python benchmarks/grpo.py --repeats 1 --beta 0.04      # a quick look, with a KL term (reference forward)

Writes benchmarks/results/grpo.json (every run) and benchmarks/results/grpo.md (the table, also printed).
Fixtures and environment are those of benchmarks/sft.py (benchmarks/README.md): `common.py`'s tokenizer and
tiny/small Llama models with random weights; prompts are the ≈64-token prompts of its prompt/completion rows.

Workload per step, both libraries: 4 prompts x 4 completions (group size 4) x at most 64 new tokens, sampled at
temperature 1 (no top-k/top-p), scored by `reward` below (cheap, the same function object for both), GRPO
group-normalized advantages, one optimizer step on the 16 completions (one epoch, one minibatch: fully
on-policy), token-mean loss (TRL's default `loss_type="dapo"`), clip 0.2, lr 1e-5 constant, gradient clipping
1.0, fp32, no gradient checkpointing, no logging or checkpoints inside the window. `--beta` sets the KL
coefficient for both (0 = TRL's default: no reference model; > 0: k3 KL loss against a frozen reference).

Timing: the step clock of `common.py`, counting only forwards with grad enabled (the training forward; the
generation and reference forwards run without grad), so consecutive grad forwards bracket one whole step:
generation, scoring, reference log-probs, loss, backward and optimizer step. completions/s = measured steps x
16 / seconds; tokens/s counts the non-pad tokens (prompt + completion) of the training forwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import common

PROMPTS, GROUP, NEW_TOKENS = 4, 4, 64
WARMUP = {"tiny": 2, "small": 1}
STEPS = {"tiny": 10, "small": 4}
LR, ROWS = 1e-5, 256
LIBS = ("alignlab", "trl")
RESULTS = Path(__file__).resolve().parent / "results"
TRL_PERF_NOTES = {"tiny": 19.4, "small": 2.34}  # shared/PERF-NOTES.md, TRL GRPO completions/s


def reward(prompts, completions, **columns) -> list[float]:
    """Share of distinct words in the completion: cheap, and it varies within a group."""
    return [len(set(c.split())) / max(len(c.split()), 1) for c in completions]


def prompt_dataset(rows: int = ROWS) -> Path:
    """JSONL of {"prompt"}: the ≈64-token prompts of common.sft_dataset."""
    path = common.cache_dir() / f"grpo-prompts-{rows}.jsonl"
    if path.exists():
        return path
    src = [json.loads(line) for line in common.sft_dataset(max(1024, rows)).open()][:rows]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in src))
    tmp.rename(path)
    return path


# ---------------------------------------------------------------- inside the child


def train_trl(model_dir: Path, data: Path, a, clock, out_dir: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    clock.attach(model)
    dataset = Dataset.from_list([json.loads(line) for line in data.open()])
    args = GRPOConfig(
        output_dir=out_dir, max_steps=a.total_steps, per_device_train_batch_size=PROMPTS * GROUP,
        num_generations=GROUP, max_completion_length=NEW_TOKENS, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=a.beta, epsilon=0.2, loss_type="dapo", scale_rewards="group", num_iterations=1,
        bf16=False, fp16=False, gradient_checkpointing=False, activation_checkpointing=False, use_vllm=False,
        report_to=[], save_strategy="no", eval_strategy="no", logging_steps=10**6, disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False, use_cpu=True, seed=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    out = trainer.train()
    return {"loss": out.training_loss}


def train_alignlab(model_dir: Path, data: Path, a, clock, out_dir: str) -> dict:
    from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig, RolloutConfig
    from alignlab.recipes import pg
    from alignlab.rewards import RewardSourceConfig

    build = pg.model_from_config  # the recipe builds its model: wrap the builder to attach the clock
    pg.model_from_config = lambda *args, **kw: clock.attach(build(*args, **kw))
    cfg = pg.PGConfig(
        model=ModelConfig(path=str(model_dir), dtype="float32", gradient_checkpointing=False),
        data=DataConfig(dataset=str(data), eval_fraction=0.0),
        optim=OptimConfig(lr=LR, scheduler="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                          grad_accum=1, max_steps=a.total_steps),
        log=LogConfig(output_dir=out_dir + "/run", log_every=10**6, eval_every=0, save_every=0, keep_checkpoints=1,
                      tensorboard=False, wandb=False, progress=False),
        rollout=RolloutConfig(prompts_per_step=PROMPTS, group_size=GROUP, max_new_tokens=NEW_TOKENS, temperature=1.0,
                              max_prompt_length=128, sample_every=0, backend=a.backend,
                              dtype=a.rollout_dtype),
        reward=RewardSourceConfig(sources=[f"python:{Path(__file__).resolve()}:reward"]),
        pg=pg.PGOptions(advantage="grpo", kl_coef=a.beta, kl_in="loss" if a.beta > 0 else "none",
                        aggregate="token_mean", clip_eps=0.2, epochs=1, minibatches=1),
        seed=0,
    )
    last = pg.main(cfg)
    return {"loss": last.get("loss")}


def child(a) -> None:
    t_start = time.perf_counter()
    common.setup_threads(a.threads)
    from transformers import AutoTokenizer

    model_dir = Path(a.model_dir)
    clock = common.GradClock(AutoTokenizer.from_pretrained(model_dir).pad_token_id, a.progress_file, a.total_steps)
    with tempfile.TemporaryDirectory(prefix=f"bench-grpo-{a.lib}-") as out_dir:
        extra = (train_trl if a.lib == "trl" else train_alignlab)(model_dir, Path(a.data), a, clock, out_dir)
    window = clock.window(a.warmup, a.steps)
    window["completions"] = a.steps * PROMPTS * GROUP
    result = {"lib": a.lib, "model": a.model, "warmup": a.warmup, "steps": a.steps, "beta": a.beta, **window,
              **extra, "peak_rss_mb": round(common.peak_rss_mb(), 1),
              "startup_s": round(clock.calls[0][0] - t_start, 2) if clock.calls else None}
    Path(a.out).write_text(json.dumps(result))


# ---------------------------------------------------------------- the parent


def metrics(run: dict, clock: str = "wall") -> dict:
    s = run["seconds"] if clock == "wall" else run["cpu_seconds"]
    steps = run["step_seconds"][run["warmup"]:run["warmup"] + run["steps"]]
    return {"completions_per_s": run["completions"] / s, "tokens_per_s": run["tokens"] / s,
            "step_s": common.median(steps) if steps else float("nan"), "peak_rss_mb": run["peak_rss_mb"],
            "startup_s": run.get("startup_s") or float("nan")}


def summarize(runs: list[dict], clock: str) -> list[dict]:
    rows = []
    for key in sorted({(r["model"], r["lib"]) for r in runs},
                      key=lambda k: (list(common.MODELS).index(k[0]), k[1] != "trl")):
        same = [r for r in runs if (r["model"], r["lib"]) == key]
        ok = [r for r in same if "error" not in r]
        row = {"model": key[0], "lib": key[1], "runs": len(ok)}
        if not ok:
            rows.append({**row, "error": same[-1]["error"]})
            continue
        ms = [metrics(r, clock) for r in ok]
        row.update({k: common.median([m[k] for m in ms]) for k in ms[0]})
        row["range"] = [min(m["completions_per_s"] for m in ms), max(m["completions_per_s"] for m in ms)]
        row["foreign_cores"] = max(r.get("foreign_cores", 0.0) for r in ok)
        rows.append(row)
    for row in rows:
        ref = next((r for r in rows if r["lib"] == "trl" and r["model"] == row["model"] and "completions_per_s" in r),
                   None)
        if ref and "completions_per_s" in row:
            row["speedup_vs_trl"] = row["completions_per_s"] / ref["completions_per_s"]
            row["rss_vs_trl"] = row["peak_rss_mb"] / ref["peak_rss_mb"]
    return rows


def markdown(summary: list[dict], info: dict, settings: dict) -> str:
    lines = [
        "# GRPO benchmark: alignlab vs TRL", "",
        f"{info['date']} · {info['cpu']} ({info['cores']} cores) · {info['threads']} threads · torch {info['torch']} "
        f"· transformers {info['transformers']} · trl {info['trl']} · alignlab {info['alignlab_commit']}", "",
        f"Command: `{settings['command']}`  ", f"Load average before / after: {settings['loadavg']}  ",
        f"Per step: {PROMPTS} prompts x {GROUP} completions x ≤ {NEW_TOKENS} new tokens, beta {settings['beta']}; "
        f"warm-up {settings['warmup']}, measured {settings['steps']} steps; median of {settings['repeats']} fresh "
        f"processes; {settings['env']}; {settings['clock']} clock; alignlab backend {settings['backend']}, "
        f"rollout dtype {settings.get('rollout_dtype', 'auto')}.", "",
        "| model | library | completions/s | range | step s | tokens/s | peak RSS MB | completions/s vs TRL "
        "| RSS vs TRL | start-up s | other load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        if "completions_per_s" not in r:
            lines.append(f"| {r['model']} | {r['lib']} | failed: {r['error'][:80]} |")
            continue
        lo, hi = r["range"]
        rel = f"{r['speedup_vs_trl']:.2f}×" if r["lib"] != "trl" and "speedup_vs_trl" in r else ""
        rss = f"{r['rss_vs_trl']:.2f}×" if r["lib"] != "trl" and "rss_vs_trl" in r else ""
        lines.append(f"| {r['model']} | {r['lib']} | {r['completions_per_s']:.2f} | {lo:.2f}–{hi:.2f} | "
                     f"{r['step_s']:.2f} | {r['tokens_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} | {rel} | {rss} | "
                     f"{r['startup_s']:.1f} | {r['foreign_cores']:.2f} |")
    notes = ", ".join(f"{m} {v}" for m, v in TRL_PERF_NOTES.items())
    lines += ["", "completions/s: completions trained on per second over the measured steps (generation included). "
              "*other load*: CPU cores other processes used during the run (above ~0.1 the numbers are disturbed). "
              f"Target: ≥ 2× TRL completions/s at ≤ TRL peak RSS. PERF-NOTES TRL completions/s (quiet): {notes}."]
    met = [f"{r['model']}: {'met' if r['speedup_vs_trl'] >= 2 and r['rss_vs_trl'] <= 1 else 'not met'}"
           for r in summary if r["lib"] == "alignlab" and "speedup_vs_trl" in r]
    return "\n".join(lines + (["", "Target: " + "; ".join(met) + "."] if met else [])) + "\n"


def parent(a) -> None:
    models, libs = a.models.split(","), a.libs.split(",")
    for value, allowed in ((models, common.MODELS), (libs, LIBS)):
        if any(v not in allowed for v in value):
            sys.exit(f"unknown {value}; choose from {list(allowed)}")
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = common.child_env(a.threads, a.glibc_tunables)
    print("building fixtures (cached after the first run) ...", file=sys.stderr)
    data, model_dirs = prompt_dataset(), {m: common.model_dir(m) for m in models}
    load_before = os.getloadavg()
    runs, t0 = [], time.perf_counter()
    jobs = [(r, m, lib) for r in range(a.repeats) for m in models for lib in libs]
    for i, (rep, m, lib) in enumerate(jobs, 1):
        label, stem = f"[{i:2d}/{len(jobs)}] {m:5s} {lib:8s} #{rep + 1}", f"grpo-{m}-{lib}-{rep + 1}"
        warmup, steps = a.warmup or WARMUP[m], a.steps or STEPS[m]
        argv = [str(Path(__file__).resolve()), "--child", "--lib", lib, "--model", m, "--model-dir",
                str(model_dirs[m]), "--data", str(data), "--warmup", str(warmup), "--steps", str(steps),
                "--total-steps", str(warmup + steps + 1), "--threads", str(a.threads), "--beta", str(a.beta),
                "--backend", a.backend, "--rollout-dtype", a.rollout_dtype, "--out", str(log_dir / f"{stem}.json"),
                "--progress-file", str(log_dir / "progress")]
        if a.wait_idle:
            common.wait_idle(a.wait_idle, a.max_load)
        res = common.run_child(argv, env=env, log_path=log_dir / f"{stem}.log", label=label)
        res.update(model=m, lib=lib, repeat=rep + 1, loadavg=os.getloadavg()[0])
        runs.append(res)
        msg = (f"FAILED ({res['error']}) " + " | ".join(res["log_tail"][-3:]) if "error" in res else
               "{completions_per_s:6.2f} completions/s  step {step_s:5.2f}s  RSS {peak_rss_mb:6,.0f} MB".format(
                   **metrics(res, a.clock)) + f"  other load {res['foreign_cores']:.2f}")
        print(f"{label} {res['wall_s']:5.0f}s {msg}  [{time.perf_counter() - t0:4.0f}s total]", file=sys.stderr)
    settings = {"command": "python benchmarks/grpo.py " + " ".join(sys.argv[1:]), "repeats": a.repeats,
                "warmup": {m: a.warmup or WARMUP[m] for m in models}, "steps": {m: a.steps or STEPS[m] for m in models},
                "loadavg": f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}", "beta": a.beta, "lr": LR,
                "clock": a.clock, "backend": a.backend, "rollout_dtype": a.rollout_dtype,
                "env": f"OMP_NUM_THREADS={a.threads}" + (", GLIBC_TUNABLES set" if a.glibc_tunables else
                                                         ", no allocator tunables")}
    summary, info = summarize(runs, a.clock), common.machine_info(a.threads)
    (RESULTS / f"{a.name}.json").write_text(json.dumps({"machine": info, "settings": settings, "summary": summary,
                                                      "runs": runs}, indent=1))
    md = markdown(summary, info, settings)
    (RESULTS / f"{a.name}.md").write_text(md)
    print(md)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.harness_args(ap, warmup=WARMUP, steps=STEPS)
    ap.add_argument("--beta", type=float, default=0.0, help="KL coefficient for both libraries (0: no reference)")
    ap.add_argument("--backend", default="auto", help="alignlab rollout backend: auto, native or hf")
    ap.add_argument("--rollout-dtype", default="auto", choices=("auto", "bf16"),
                    help="alignlab rollout precision (rollout.dtype; training stays fp32; TRL has no such option)")
    ap.add_argument("--name", default="grpo", help="results/<name>.{json,md}")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--lib", "--model", "--model-dir", "--data", "--out", "--progress-file"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    ap.add_argument("--total-steps", type=int, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    child(args) if args.child else parent(args)
