"""SFT speed and memory: alignlab's SFT recipe against TRL's `SFTTrainer`, same models, data and settings.

Run (from the repository root; needs `pip install -e ".[bench]"`):
    python benchmarks/sft.py                                   # everything: ~15 min on 2 cores
    python benchmarks/sft.py --models tiny --repeats 1         # a quick look
    python benchmarks/sft.py --libs trl --merge                # redo one side, keep the other's runs

Writes benchmarks/results/sft.json (every run) and benchmarks/results/sft.md (the table, also printed).
What is measured and how to read it: benchmarks/README.md.

Each (model, precision, library, repeat) is one fresh `python` process that trains for W warm-up + M
measured + 1 steps; a forward pre-hook on the input embedding timestamps each step's start (the same
hook for both libraries), and the measured window runs from the start of step W to the start of step W+M.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import common

BATCH = {"tiny": 16, "small": 8}
WARMUP = {"tiny": 5, "small": 2}
STEPS = {"tiny": 30, "small": 8}
LR = 1e-4
MAX_LENGTH = 256  # longest example is 64 + 128 + EOS = 193 tokens: nothing is truncated
LIBS = ("alignlab", "trl")
PRECISIONS = ("fp32", "bf16")
RESULTS = Path(__file__).resolve().parent / "results"
TRL_PERF_NOTES = {"tiny": 4324, "small": 575}  # shared/PERF-NOTES.md, TRL fp32 tokens/s


# ---------------------------------------------------------------- inside the child


def train_trl(model_dir: Path, data: Path, a, clock: common.StepClock, out_dir: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    clock.attach(model)
    rows = [json.loads(line) for line in data.open()]
    dataset = Dataset.from_list(rows)
    args = SFTConfig(
        output_dir=out_dir, max_steps=a.total_steps, per_device_train_batch_size=a.batch_size,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        # TRL defaults bf16 and gradient checkpointing to True; transformers 5 renamed the latter
        bf16=a.precision == "bf16", fp16=False, gradient_checkpointing=False, activation_checkpointing=False,
        completion_only_loss=True, packing=False, max_length=MAX_LENGTH, report_to=[], save_strategy="no",
        eval_strategy="no", logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=False, use_cpu=True, seed=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    out = trainer.train()
    return {"loss": out.training_loss, "mixed_precision": trainer.accelerator.mixed_precision}


def train_alignlab(model_dir: Path, data: Path, a, clock: common.StepClock, out_dir: str) -> dict:
    from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig
    from alignlab.recipes import sft

    # The recipe builds its model internally; wrap the builder so the step clock sees that model.
    build = sft.model_from_config
    sft.model_from_config = lambda *args, **kw: clock.attach(build(*args, **kw))
    cfg = sft.SFTConfig(
        model=ModelConfig(path=str(model_dir), dtype="float32", gradient_checkpointing=False,
                          mixed_precision="bf16" if a.precision == "bf16" else "no"),
        data=DataConfig(dataset=str(data), max_length=MAX_LENGTH, eval_fraction=0.0, packing=False),
        optim=OptimConfig(lr=LR, scheduler="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                          batch_size=a.batch_size, grad_accum=1, max_steps=a.total_steps),
        log=LogConfig(output_dir=out_dir, log_every=10**6, eval_every=0, save_every=0, keep_checkpoints=1,
                      tensorboard=False, wandb=False, progress=False),
        seed=0,
    )
    last = sft.main(cfg)
    return {"loss": last.get("loss")}


def child(a) -> None:
    t_start = time.perf_counter()
    common.setup_threads(a.threads)
    from transformers import AutoTokenizer

    model_dir = Path(a.model_dir)
    pad_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id
    clock = common.StepClock(pad_id, a.progress_file, a.total_steps)
    clock.mark_rss_at(a.warmup + a.steps)
    prof = profile_window(clock, a.warmup, a.steps) if a.profile else None
    with tempfile.TemporaryDirectory(prefix=f"bench-sft-{a.lib}-") as out_dir:
        train = train_trl if a.lib == "trl" else train_alignlab
        extra = train(model_dir, Path(a.data), a, clock, out_dir)
    window = clock.window(a.warmup, a.steps)
    extra["gradient_checkpointing"] = bool(getattr(clock.model, "is_gradient_checkpointing", False))
    import torch

    extra["torch_threads_at_end"] = torch.get_num_threads()  # a library that changes it would show here
    result = {"lib": a.lib, "model": a.model, "precision": a.precision, "batch_size": a.batch_size,
              "warmup": a.warmup, "steps": a.steps, **window, **extra,
              "startup_s": round(clock.calls[0][0] - t_start, 2) if clock.calls else None,
              "peak_rss_mb": round(common.peak_rss_mb(), 1),  # at exit: start-up to final save
              "peak_rss_train_mb": round(clock.rss_at_mark, 1)}  # start-up to the end of the measured window
    if prof is not None:
        result["profile"] = write_profile(prof, Path(a.out).with_suffix(".profile.txt"), a.steps)
    Path(a.out).write_text(json.dumps(result))


def profile_window(clock: common.StepClock, warmup: int, steps: int):
    """torch.profiler over exactly the measured steps (started and stopped by the step clock)."""
    import torch

    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    def on_step(k: int) -> None:
        if k == warmup:
            prof.start()
        elif k == warmup + steps:
            prof.stop()

    clock.on_step = on_step
    return prof


def write_profile(prof, path: Path, steps: int) -> str:
    avg = prof.key_averages()
    path.write_text(f"torch.profiler over {steps} measured steps (times are totals over those steps)\n\n"
                    "## by self CPU time\n" + avg.table(sort_by="self_cpu_time_total", row_limit=45)
                    + "\n\n## by total CPU time (inclusive)\n"
                    + avg.table(sort_by="cpu_time_total", row_limit=45))
    return str(path)


# ---------------------------------------------------------------- the parent


def metrics(run: dict, model: str, peak_gflops: float, clock: str = "wall") -> dict:
    """Per-run numbers; with clock="cpu" the seconds are the child's CPU time (see --clock)."""
    s = run["seconds"] if clock == "wall" else run["cpu_seconds"]
    tok_s = run["tokens"] / s
    return {"samples_per_s": run["samples"] / s, "tokens_per_s": tok_s,
            "mfu_pct": 100 * 6 * common.matmul_params(model) * tok_s / (peak_gflops * 1e9),
            "peak_rss_mb": run["peak_rss_mb"],
            "padding_pct": 100 * (1 - run["tokens"] / run["padded_tokens"]),
            "tokens_per_sample": run["tokens"] / run["samples"]}


def summarize(runs: list[dict], peaks: dict, clock: str) -> list[dict]:
    rows = []
    keys = sorted({(r["model"], r["precision"], r["lib"]) for r in runs},
                  key=lambda k: (list(common.MODELS).index(k[0]), PRECISIONS.index(k[1]), k[2] != "trl"))
    for model, precision, lib in keys:
        same = [r for r in runs if (r["model"], r["precision"], r["lib"]) == (model, precision, lib)]
        ok = [r for r in same if "error" not in r]
        row = {"model": model, "precision": precision, "lib": lib, "batch_size": BATCH[model],
               "runs": len(ok), "errors": len(same) - len(ok)}
        if ok:
            ms = [metrics(r, model, peaks[precision], clock) for r in ok]
            for k in ms[0]:
                row[k] = common.median([m[k] for m in ms])
            tps = [m["tokens_per_s"] for m in ms]
            row["tokens_per_s_range"] = [min(tps), max(tps)]
            losses = [r["loss"] for r in ok if r.get("loss") is not None]
            row["loss"] = common.median(losses) if losses else float("nan")
            row["foreign_cores"] = max(r.get("foreign_cores", 0.0) for r in ok)
        else:
            row["error"] = same[-1]["error"]
        rows.append(row)
    for row in rows:  # alignlab relative to TRL on the same model and precision
        ref = next((r for r in rows if r["lib"] == "trl" and r["model"] == row["model"]
                    and r["precision"] == row["precision"] and "tokens_per_s" in r), None)
        if ref and "tokens_per_s" in row:
            row["speedup_vs_trl"] = row["tokens_per_s"] / ref["tokens_per_s"]
            row["rss_vs_trl"] = row["peak_rss_mb"] / ref["peak_rss_mb"]
    return rows


def clock_note(clock: str) -> str:
    if clock == "wall":
        return "Clock: wall time of the measured steps.  "
    return ("**Clock: CPU time** of the 1-thread child over the measured steps (and CPU-time matmul peak): "
            "a fallback for a machine shared with other work, where wall time is meaningless; per second "
            "means per CPU-second of one core.  ")


def markdown(summary: list[dict], info: dict, peaks: dict, settings: dict) -> str:
    lines = [
        "# SFT benchmark: alignlab vs TRL",
        "",
        f"{info['date']} · {info['cpu']} ({info['cores']} cores, {', '.join(info['isa'])}), "
        f"{info['memory_gib']} GiB · {info['threads']} threads · Python {info['python']} "
        f"· torch {info['torch']} · transformers {info['transformers']} · trl {info['trl']} "
        f"· alignlab {info['alignlab_commit']}",
        "",
        f"Command: `{settings['command']}`  ",
        f"Steps: warm-up {settings['warmup']}, measured {settings['steps']} (per model); "
        f"median of {settings['repeats']} fresh processes; environment: {settings['env']}.  ",
        clock_note(settings["clock"]),
        f"Matmul peak (torch.mm, {info['threads']} threads, best shape): fp32 {peaks['fp32']:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16']:.0f} GFLOP/s; MFU = 6·N·tokens/s / peak of the run's precision "
        f"(N = matmul parameters: tiny {common.matmul_params('tiny') / 1e6:.2f}M, "
        f"small {common.matmul_params('small') / 1e6:.1f}M).",
        "",
        "| model | precision | library | batch | samples/s | tokens/s | range | MFU % | peak RSS MB "
        "| tok/s vs TRL | RSS vs TRL | padding % | final loss | other load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['model']} | {r['precision']} | {r['lib']} | {r['batch_size']} | "
                         f"failed: {r['error'][:80]} |" + " |" * 9)
            continue
        lo, hi = r["tokens_per_s_range"]
        rel = f"{r['speedup_vs_trl']:.2f}×" if r["lib"] != "trl" and "speedup_vs_trl" in r else ""
        rss = f"{r['rss_vs_trl']:.2f}×" if r["lib"] != "trl" and "rss_vs_trl" in r else ""
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['lib']} | {r['batch_size']} "
            f"| {r['samples_per_s']:.2f} | {r['tokens_per_s']:,.0f} | {lo:,.0f}–{hi:,.0f} "
            f"| {r['mfu_pct']:.1f} | {r['peak_rss_mb']:,.0f} | "
            f"{rel} | {rss} | {r['padding_pct']:.0f} | {r['loss']:.3f} | {r['foreign_cores']:.2f} |")
    lines += [
        "",
        "tokens/s counts non-pad tokens (prompt + completion + EOS) of the measured steps; samples/s counts "
        "sequences. Target: alignlab ≥ 1.5× TRL tokens/s at ≤ TRL's peak RSS. *other load*: the most CPU "
        "cores that other processes used during any of the runs (above ~0.1 the run was disturbed). "
        f"Reference (shared/PERF-NOTES.md, TRL fp32): tiny {TRL_PERF_NOTES['tiny']:,} tok/s, "
        f"small {TRL_PERF_NOTES['small']:,} tok/s.",
    ]
    met = []
    for r in summary:
        if r["lib"] == "alignlab" and "speedup_vs_trl" in r:
            ok = r["speedup_vs_trl"] >= 1.5 and r["rss_vs_trl"] <= 1.0
            met.append(f"{r['model']} {r['precision']}: {'met' if ok else 'not met'}")
    if met:
        lines += ["", "Target: " + "; ".join(met) + "."]
    return "\n".join(lines) + "\n"


def probe_peaks(a, env: dict, log_dir: Path) -> dict:
    out = log_dir / "matmul.json"
    argv = [str(Path(__file__).resolve()), "--probe", "--threads", str(a.threads), "--out", str(out),
            "--progress-file", str(log_dir / "progress")]
    for attempt in range(a.retries + 1):
        if a.wait_idle:
            common.wait_idle(a.wait_idle, a.max_load)
        res = common.run_child(argv, env=env, log_path=log_dir / "matmul.log", label="matmul peak probe")
        if "error" in res:
            sys.exit(f"matmul probe failed: {res['error']}\n" + "\n".join(res["log_tail"]))
        if res["foreign_cores"] <= a.max_load or attempt == a.retries:
            return res
        print(f"matmul probe disturbed (other processes used {res['foreign_cores']:.2f} cores): again",
              file=sys.stderr)
    raise AssertionError("unreachable")


def parent(a) -> None:
    models = a.models.split(",")
    precisions = a.precisions.split(",")
    libs = a.libs.split(",")
    for value, allowed in ((models, common.MODELS), (precisions, PRECISIONS), (libs, LIBS)):
        bad = [v for v in value if v not in allowed]
        if bad:
            sys.exit(f"unknown {bad}; choose from {list(allowed)}")
    if a.clock == "cpu" and a.threads != 1:
        sys.exit("--clock cpu needs --threads 1 (with more threads, spinning OpenMP workers inflate CPU time)")
    if "alignlab" in libs:
        try:
            import alignlab.recipes.sft  # noqa: F401
        except Exception as e:  # noqa: BLE001 - report any import failure and stop before spending time
            sys.exit(f"alignlab's SFT recipe does not import ({type(e).__name__}: {e}); run with --libs trl")
    out_dir = Path(a.results_dir)
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    out_json = out_dir / "sft.json"
    env = common.child_env(a.threads, a.glibc_tunables)
    warmup = {m: a.warmup if a.warmup is not None else WARMUP[m] for m in models}
    steps = {m: a.steps if a.steps is not None else STEPS[m] for m in models}

    print("building fixtures (cached after the first run) ...", file=sys.stderr)
    need_rows = max((warmup[m] + steps[m] + 1) * BATCH[m] for m in models)
    data = common.sft_dataset(max(1024, need_rows))
    model_dirs = {m: common.model_dir(m) for m in models}
    info = common.machine_info(a.threads)

    peak_key = "peak_gflops" if a.clock == "wall" else "peak_gflops_cpu"
    previous = json.loads(out_json.read_text()) if a.merge and out_json.exists() else {}
    if a.peak_fp32 and a.peak_bf16:
        peaks = {"fp32": a.peak_fp32, "bf16": a.peak_bf16}
        probe = {"given": peaks}
    elif a.merge and "matmul_peak" in previous:
        probe = previous["matmul_peak"]
        peaks = {p: probe[p][peak_key] for p in PRECISIONS}
    else:
        print("measuring the matmul peak ...", file=sys.stderr)
        probe = probe_peaks(a, env, log_dir)
        peaks = {p: probe[p][peak_key] for p in PRECISIONS}
    print(f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s", file=sys.stderr)

    jobs = [(r, m, p, lib) for r in range(a.repeats) for m in models for p in precisions for lib in libs]
    settings = {"command": "python benchmarks/sft.py " + " ".join(sys.argv[1:]), "warmup": warmup,
                "steps": steps, "repeats": a.repeats, "clock": a.clock, "batch_size": BATCH, "lr": LR,
                "max_length": MAX_LENGTH,
                "env": (f"OMP_NUM_THREADS={a.threads}, torch.set_num_threads({a.threads})"
                        + (f", GLIBC_TUNABLES={common.GLIBC_TUNABLES}" if a.glibc_tunables else
                           ", no allocator tunables")),
                "dataset": common.dataset_stats(data),
                "configs": sorted({(m, p, lib) for _, m, p, lib in jobs})}
    runs = []
    t0 = time.perf_counter()
    for i, (rep, m, p, lib) in enumerate(jobs, 1):
        label = f"[{i:2d}/{len(jobs)}] {m:5s} {p} {lib:8s} #{rep + 1}"
        total = warmup[m] + steps[m] + 1
        stem = f"sft-{m}-{p}-{lib}-{rep + 1}"
        argv = [str(Path(__file__).resolve()), "--child", "--lib", lib, "--model", m, "--precision", p,
                "--model-dir", str(model_dirs[m]), "--data", str(data), "--batch-size", str(BATCH[m]),
                "--warmup", str(warmup[m]), "--steps", str(steps[m]), "--total-steps", str(total),
                "--threads", str(a.threads), "--out", str(log_dir / f"{stem}.json"),
                "--progress-file", str(log_dir / "progress")] + (["--profile"] if a.profile else [])
        for attempt in range(a.retries + 1):
            load = round(common.wait_idle(a.wait_idle, a.max_load), 2) if a.wait_idle else None
            res = common.run_child(argv, env=env, log_path=log_dir / f"{stem}.log", label=label)
            if "error" in res or res["foreign_cores"] <= a.max_load or attempt == a.retries:
                break
            print(f"{label}  disturbed (other processes used {res['foreign_cores']:.2f} cores): again",
                  file=sys.stderr)
        res.update(attempts=attempt + 1)
        res.update(model=m, precision=p, lib=lib, repeat=rep + 1, load_before=load)
        runs.append(res)
        if "error" in res:
            msg = f"FAILED ({res['error']})\n      " + "\n      ".join(res["log_tail"][-6:])
        else:
            mt = metrics(res, m, peaks[p], a.clock)
            msg = (f"{mt['tokens_per_s']:8,.0f} tok/s {mt['samples_per_s']:6.2f} samples/s "
                   f"MFU {mt['mfu_pct']:4.1f}%  RSS {mt['peak_rss_mb']:6,.0f} MB  loss {res['loss']:.3f}  "
                   f"other load {res['foreign_cores']:.2f}")
        print(f"{label}  {res['wall_s']:5.0f}s  {msg}   [{time.perf_counter() - t0:4.0f}s total]",
              file=sys.stderr)
        write_results(out_dir, previous, runs, info, settings, probe, peaks, a.clock)  # survives an interrupt

    summary = write_results(out_dir, previous, runs, info, settings, probe, peaks, a.clock)
    print(markdown(summary, info, peaks, settings))


def write_results(out_dir: Path, previous: dict, runs: list[dict], info: dict, settings: dict, probe: dict,
                  peaks: dict, clock: str) -> list[dict]:
    """(Re)write sft.json and sft.md from this invocation's runs plus, with --merge, the previous file's runs
    of the configurations this invocation does not run."""
    redo = {tuple(k) for k in settings["configs"]}
    kept = [r for r in previous.get("runs", []) if (r["model"], r["precision"], r["lib"]) not in redo]
    summary = summarize(kept + runs, peaks, clock)
    (out_dir / "sft.json").write_text(json.dumps({"machine": info, "settings": settings, "matmul_peak": probe,
                                                  "summary": summary, "runs": kept + runs}, indent=1))
    (out_dir / "sft.md").write_text(markdown(summary, info, peaks, settings))
    return summary


def probe_child(a) -> None:
    common.setup_threads(a.threads)
    res = {p: common.matmul_peak(p) for p in PRECISIONS}
    Path(a.out).write_text(json.dumps(res))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny,small", help="comma-separated: tiny,small")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    ap.add_argument("--libs", default="alignlab,trl", help="comma-separated: alignlab,trl")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per configuration (median)")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"measured steps per run (default per model: {STEPS})")
    ap.add_argument("--warmup", type=int, default=None, help=f"warm-up steps (default per model: {WARMUP})")
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads, same for every library")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time (the real measure, needs an otherwise idle machine); cpu: the "
                         "child's CPU time, with --threads 1, a fallback for a shared machine (still noisy)")
    ap.add_argument("--glibc-tunables", action="store_true",
                    help="run every library with GLIBC_TUNABLES that keep freed memory (PERF-NOTES §2)")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="before each run, wait up to this long for other processes to go quiet")
    ap.add_argument("--max-load", type=float, default=0.15, metavar="CORES",
                    help="a run during which other processes used more CPU cores than this is 'disturbed'")
    ap.add_argument("--retries", type=int, default=0,
                    help="rerun a disturbed run up to this many times (with --wait-idle before each)")
    ap.add_argument("--merge", action="store_true",
                    help="keep results/sft.json's runs of configurations not rerun now, and its matmul peak")
    ap.add_argument("--results-dir", default=str(RESULTS), help="where sft.json, sft.md and logs/ go")
    ap.add_argument("--profile", action="store_true",
                    help="torch.profiler over the measured steps (slows them: timings are not comparable); "
                         "tables in results/logs/*.profile.txt")
    ap.add_argument("--peak-fp32", type=float, default=None, help="skip the probe: fp32 peak GFLOP/s")
    ap.add_argument("--peak-bf16", type=float, default=None, help="skip the probe: bf16 peak GFLOP/s")
    # internal: one measured run in a child process
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    for name in ("--lib", "--model", "--precision", "--model-dir", "--data", "--out", "--progress-file"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    for name in ("--batch-size", "--total-steps"):
        ap.add_argument(name, type=int, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    if args.child:
        child(args)
    elif args.probe:
        probe_child(args)
    else:
        parent(args)
