"""Reward-model training speed and memory: `alignlab rm` against TRL's `RewardTrainer`, same model, data, settings.

Run (from the repository root; needs `pip install -e ".[bench]"`):
    python benchmarks/reward.py                      # tiny model, fp32, 8 pairs/batch, median of 3 (~5 min)
    python benchmarks/reward.py --models tiny,small  # also the 47M model (4 pairs/batch; slow on 2 cores)
    python benchmarks/reward.py --repeats 1          # a quick look
    python benchmarks/reward.py --libs trl --merge   # redo one side, keep the other's runs
    python benchmarks/reward.py --threads 1 --clock cpu   # on a busy machine: CPU-time clock, a load-robust proxy
    python benchmarks/reward.py --precision bf16     # bf16 autocast in both (results/reward-bf16.*)

Writes benchmarks/results/reward.json (every run) and benchmarks/results/reward.md (the table, also printed).

Fixtures (benchmarks/common.py): the `tiny` and `small` Llamas (random weights, vocab 4096) and the SFT benchmark's
prompt / completion rows (64-token prompts, 64-128-token completions); pair i is (prompt_i, completion_i,
completion_{i+1}), so chosen and rejected differ in length as in real data. Both libraries get a new score
head on the same checkpoint, batch 8 pairs (tiny; 16 sequences in one TRL forward) or 4 (small), fp32 (or
`--precision bf16`: autocast in both, TRL `bf16=True`, alignlab `model.mixed_precision=bf16`), lr 1e-5
constant, clipping 1.0, max_length 256 (nothing truncated or filtered), no gradient checkpointing, no eval, no
checkpoints inside the window. Timing: the StepClock of common.py (a forward pre-hook on the input embedding) over steps
[W, W+M) of a fresh process per run; samples/s counts PAIRS per second; tokens/s counts the non-pad tokens
each library feeds the model (alignlab holds each pair's prompt once, TRL twice, so compare pairs/s). The
machine's 1-minute load average is recorded before and after each run, next to `foreign_cores`
(CPU used by other processes during the run): numbers from a busy machine are not comparable.
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

BATCH = {"tiny": 8, "small": 4}  # pairs per step
WARMUP = {"tiny": 5, "small": 4}  # alignlab's first ~3 small steps are slow (first shapes, last-layer check)
STEPS = {"tiny": 30, "small": 24}
LR = 1e-5
MAX_LENGTH = 256
LIBS = ("alignlab", "trl")
RESULTS = Path(__file__).resolve().parent / "results"
TRL_PERF_NOTES = {"samples_per_s": 34.2, "tokens_per_s": 11_000, "peak_rss_mb": 790}  # shared/PERF-NOTES.md


def pair_dataset(rows: int) -> Path:
    """JSONL of {"prompt", "chosen", "rejected"} built from the SFT benchmark rows (cached)."""
    path = common.cache_dir() / f"reward-pairs-{rows}.jsonl"
    if path.exists():
        return path
    sft = [json.loads(line) for line in common.sft_dataset(rows + 1).open()]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for a, b in zip(sft, sft[1:]):
            f.write(json.dumps({"prompt": a["prompt"], "chosen": a["completion"], "rejected": b["completion"]}) + "\n")
    tmp.rename(path)
    return path


# ---------------------------------------------------------------- inside the child


def train_trl(model_dir: Path, data: Path, a, clock: common.StepClock, out_dir: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    clock.attach(model)
    dataset = Dataset.from_list([json.loads(line) for line in data.open()])
    args = RewardConfig(
        output_dir=out_dir, max_steps=a.total_steps, per_device_train_batch_size=a.batch_size, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, fp16=False,
        bf16=a.precision == "bf16",
        gradient_checkpointing=False, activation_checkpointing=False, max_length=MAX_LENGTH, report_to=[],
        save_strategy="no", eval_strategy="no", logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=False, use_cpu=True, seed=0,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    out = trainer.train()
    return {"loss": out.training_loss}


def train_alignlab(model_dir: Path, data: Path, a, clock: common.StepClock, out_dir: str) -> dict:
    from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig
    from alignlab.recipes import reward

    build = reward.build_model  # the recipe builds its model inside main: wrap it so the clock sees it
    reward.build_model = lambda *args, **kw: clock.attach(build(*args, **kw))
    cfg = reward.RewardConfig(
        model=ModelConfig(path=str(model_dir), dtype="float32", gradient_checkpointing=False,
                          mixed_precision="bf16" if a.precision == "bf16" else "no"),
        data=DataConfig(dataset=str(data), max_length=MAX_LENGTH, eval_fraction=0.0),
        optim=OptimConfig(lr=LR, scheduler="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                          batch_size=a.batch_size, grad_accum=1, max_steps=a.total_steps),
        log=LogConfig(output_dir=out_dir, log_every=10**6, eval_every=0, save_every=10**6, keep_checkpoints=1,
                      tensorboard=False, progress=False),
        rm=reward.RewardOptions(normalize_on="none"),
    )
    result = reward.main(cfg)
    return {"loss": result["last_train_metrics"].get("loss")}


def child(a) -> None:
    t_start = time.perf_counter()
    common.setup_threads(a.threads)
    from transformers import AutoTokenizer

    model_dir = Path(a.model_dir)
    clock = common.StepClock(AutoTokenizer.from_pretrained(model_dir).pad_token_id, a.progress_file, a.total_steps)
    with tempfile.TemporaryDirectory(prefix=f"bench-rm-{a.lib}-") as out_dir:
        extra = (train_trl if a.lib == "trl" else train_alignlab)(model_dir, Path(a.data), a, clock, out_dir)
    window = clock.window(a.warmup, a.steps)
    window["pairs"] = a.steps * a.batch_size  # rows per forward differ (TRL: 2 per pair; alignlab: 1, prompt shared)
    result = {"lib": a.lib, "model": a.model, "precision": a.precision, "batch_size": a.batch_size,
              "warmup": a.warmup, "steps": a.steps,
              **window, **extra, "startup_s": round(clock.calls[0][0] - t_start, 2),
              "peak_rss_mb": round(common.peak_rss_mb(), 1)}
    Path(a.out).write_text(json.dumps(result))


# ---------------------------------------------------------------- the parent


def metrics(run: dict, peak: dict, clock: str = "wall") -> dict:
    """Per-run numbers; with clock="cpu" the seconds are the child's CPU time (use it with --threads 1) and MFU is
    against the CPU-time matmul peak."""
    s = run["seconds"] if clock == "wall" else run["cpu_seconds"]
    tok_s = run["tokens"] / s
    model = run.get("model", "tiny")
    return {"samples_per_s": run["pairs"] / s, "tokens_per_s": tok_s,
            "mfu_pct": 100 * 6 * rm_matmul_params(model) * tok_s / (peak[clock] * 1e9),
            "peak_rss_mb": run["peak_rss_mb"], "padding_pct": 100 * (1 - run["tokens"] / run["padded_tokens"])}


def rm_matmul_params(model: str) -> int:
    """Matmul parameters of the reward model: the causal LM's without its LM head, plus the 1-output score head."""
    hidden = common.MODELS[model]["hidden_size"]
    return common.matmul_params(model) - hidden * common.VOCAB_SIZE + hidden


def summarize(runs: list[dict], peak: dict, clock: str) -> list[dict]:
    rows = []
    for model in common.MODELS:
        for lib in LIBS:
            ok = [r for r in runs if r["lib"] == lib and r.get("model", "tiny") == model and "error" not in r]
            if not ok:
                continue
            ms = [metrics(r, peak, clock) for r in ok]
            row = {"model": model, "lib": lib, "batch_size": BATCH[model], "runs": len(ok),
                   **{k: common.median([m[k] for m in ms]) for k in ms[0]}}
            row["samples_per_s_range"] = [min(m["samples_per_s"] for m in ms), max(m["samples_per_s"] for m in ms)]
            row["loss"] = common.median([r["loss"] for r in ok])
            row["foreign_cores"] = max(r.get("foreign_cores", 0.0) for r in ok)
            row["load_avg"] = [min(r["load_before"] for r in ok), max(r["load_after"] for r in ok)]
            rows.append(row)
    for row in rows:
        ref = next((r for r in rows if r["lib"] == "trl" and r["model"] == row["model"]), None)
        if ref and row["lib"] != "trl":
            row["speedup_vs_trl"] = row["samples_per_s"] / ref["samples_per_s"]
            row["rss_vs_trl"] = row["peak_rss_mb"] / ref["peak_rss_mb"]
    return rows


def markdown(summary: list[dict], info: dict, peak: dict, settings: dict) -> str:
    clock = settings.get("clock", "wall")
    lines = [
        "# Reward-model benchmark: alignlab vs TRL", "",
        f"{info['date']} · {info['cpu']} ({info['cores']} cores) · {info['threads']} threads · torch {info['torch']} "
        f"· transformers {info['transformers']} · trl {info['trl']} · alignlab {info.get('alignlab_commit', '')}", "",
        f"Command: `{settings['command']}`  ",
        f"Llama, {settings.get('precision', 'fp32')}, pairs/step {settings['batch_pairs']}, warm-up "
        f"{settings['warmup']} + {settings['steps']} "
        f"measured steps, median of {settings['repeats']} fresh processes; {settings['env']}; {clock} clock; fp32 "
        f"matmul peak {peak[clock]:.0f} GFLOP/s ({clock} clock).", "",
        "| model | library | pairs/step | pairs/s | range | tokens/s | MFU % | peak RSS MB | pairs/s vs TRL "
        "| RSS vs TRL | padding % | final loss | load avg (1 min) | other load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lo, hi = r["samples_per_s_range"]
        rel = f"{r['speedup_vs_trl']:.2f}×" if "speedup_vs_trl" in r else ""
        rss = f"{r['rss_vs_trl']:.2f}×" if "rss_vs_trl" in r else ""
        lines.append(f"| {r['model']} | {r['lib']} | {r['batch_size']} | {r['samples_per_s']:.1f} | {lo:.1f}–{hi:.1f} "
                     f"| {r['tokens_per_s']:,.0f} | {r['mfu_pct']:.1f} | {r['peak_rss_mb']:,.0f} | {rel} | {rss} "
                     f"| {r['padding_pct']:.0f} | {r['loss']:.3f} | {r['load_avg'][0]:.1f}–{r['load_avg'][1]:.1f} "
                     f"| {r['foreign_cores']:.2f} |")
    lines += ["", f"Reference (shared/PERF-NOTES.md, TRL tiny on an idle machine, 2 threads, wall clock): "
              f"{TRL_PERF_NOTES['samples_per_s']} pairs/s, {TRL_PERF_NOTES['tokens_per_s']:,} tokens/s, "
              f"{TRL_PERF_NOTES['peak_rss_mb']} MB. Target: alignlab ≥ 1.5× TRL pairs/s at ≤ TRL peak RSS. tokens/s: "
              "the non-pad tokens each library feeds the model (alignlab holds each prompt once, TRL twice: compare "
              "pairs/s). *load avg*: the machine's 1-minute load average around the runs (2 cores); *other load*: "
              "the most cores other processes used during a run (above ~0.1 wall-clock numbers are disturbed)."]
    met = [f"{r['model']}: {'met' if r['speedup_vs_trl'] >= 1.5 and r['rss_vs_trl'] <= 1.0 else 'not met'} "
           f"({r['speedup_vs_trl']:.2f}× pairs/s, {r['rss_vs_trl']:.2f}× RSS)"
           for r in summary if "speedup_vs_trl" in r]
    if settings.get("note"):
        lines += ["", settings["note"]]
    return "\n".join(lines + (["", "Target: " + "; ".join(met) + "."] if met else [])) + "\n"


def parent(a) -> None:
    models, libs = a.models.split(","), a.libs.split(",")
    for value, allowed in ((models, common.MODELS), (libs, LIBS)):
        if any(v not in allowed for v in value):
            sys.exit(f"unknown {value}; choose from {list(allowed)}")
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    out_json = RESULTS / f"{common.results_stem('reward', a.precision)}.json"
    env = common.child_env(a.threads, a.glibc_tunables)
    warmup = {m: a.warmup or WARMUP[m] for m in models}
    steps = {m: a.steps or STEPS[m] for m in models}
    data = pair_dataset(max(1024, max((warmup[m] + steps[m] + 1) * BATCH[m] for m in models)))
    model_dirs = {m: common.model_dir(m) for m in models}
    info = common.machine_info(a.threads)
    previous = json.loads(out_json.read_text()) if a.merge and out_json.exists() else {}
    peak = previous.get("peak") if previous.get("peak", {}).get("threads") == a.threads else None
    if a.peak_fp32:
        peak = {"wall": a.peak_fp32, "cpu": a.peak_fp32, "threads": a.threads}
    if peak is None:  # in a child with the runs' threads and environment, like the runs themselves
        peak = common.probe_peak(env, a.threads)
    runs = []
    for rep in range(a.repeats):
        for model in models:
            for lib in libs:
                label = f"{model:5s} {lib:8s} {a.precision} #{rep + 1}"
                stem = f"{out_json.stem}-{model}-{lib}-{rep + 1}"
                total = warmup[model] + steps[model] + 1
                argv = [str(Path(__file__).resolve()), "--child", "--lib", lib, "--model", model,
                        "--model-dir", str(model_dirs[model]), "--data", str(data), "--batch-size",
                        str(BATCH[model]), "--warmup", str(warmup[model]), "--steps", str(steps[model]),
                        "--total-steps", str(total), "--threads", str(a.threads), "--precision", a.precision,
                        "--out", str(log_dir / f"{stem}.json"), "--progress-file", str(log_dir / "progress")]
                if a.wait_idle:
                    common.wait_idle(a.wait_idle, a.max_load)
                before = os.getloadavg()[0]
                res = common.run_child(argv, env=env, log_path=log_dir / f"{stem}.log", label=label)
                res.update(lib=lib, model=model, repeat=rep + 1, load_before=before, load_after=os.getloadavg()[0])
                runs.append(res)
                msg = res.get("error") or (f"{metrics(res, peak, a.clock)['samples_per_s']:.1f} pairs/s  "
                                           f"RSS {res['peak_rss_mb']:.0f} MB  loss {res['loss']:.3f}  "
                                           f"load {before:.1f}->{res['load_after']:.1f}  "
                                           f"other {res['foreign_cores']:.2f}")
                print(f"{label} {res['wall_s']:5.0f}s  {msg}", file=sys.stderr)
    if previous.get("runs"):
        runs = [r for r in previous["runs"] if (r["lib"], r.get("model", "tiny")) not in
                {(lib, m) for lib in libs for m in models}] + runs
    settings = {"command": "python benchmarks/reward.py " + " ".join(sys.argv[1:]), "warmup": warmup,
                "steps": steps, "repeats": a.repeats, "batch_pairs": {m: BATCH[m] for m in models}, "lr": LR,
                "max_length": MAX_LENGTH, "clock": a.clock, "note": a.note, "precision": a.precision,
                "env": f"{a.threads} threads" + (", GLIBC_TUNABLES for both" if a.glibc_tunables else
                                                  ", no allocator tunables")}
    for key in ("warmup", "steps", "batch_pairs"):  # the merged runs' settings too
        settings[key] = {**previous.get("settings", {}).get(key, {}), **settings[key]}
    summary = summarize(runs, peak, a.clock)
    out_json.write_text(json.dumps({"machine": info, "settings": settings, "peak": peak, "summary": summary,
                                    "runs": runs}, indent=1))
    md = markdown(summary, info, peak, settings)
    out_json.with_suffix(".md").write_text(md)
    print(md)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.harness_args(ap, warmup=WARMUP, steps=STEPS)
    ap.add_argument("--precision", choices=common.PRECISIONS, default="fp32",
                    help="fp32, or bf16 autocast in both libraries (results go to results/reward-bf16.json/.md)")
    ap.add_argument("--merge", action="store_true", help="keep results/reward.json's runs of libraries not rerun")
    ap.add_argument("--peak-fp32", type=float, default=None, help="skip the probe: fp32 matmul peak GFLOP/s")
    ap.add_argument("--note", default="", help="a line written under the table (e.g. the machine's load)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--lib", "--model", "--model-dir", "--data", "--out", "--progress-file"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    for name in ("--total-steps", "--batch-size"):
        ap.add_argument(name, type=int, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    child(args) if args.child else parent(args)
