"""DPO speed and memory: alignlab's preference recipe (`--loss dpo`) against TRL's `DPOTrainer` (sigmoid loss),
same models, data and settings, with a live reference model and with precomputed reference log-probs.

Run (from the repository root; needs `pip install -e ".[bench]"`):
    python benchmarks/dpo.py                                   # tiny, both reference modes, 3 repeats
    python benchmarks/dpo.py --models tiny,small               # also the 47M model (slow on 2 cores)
    python benchmarks/dpo.py --repeats 1 --refs precomputed    # a quick look
    python benchmarks/dpo.py --precision bf16                  # bf16 autocast in both (results/dpo-bf16.*)

Writes benchmarks/results/dpo.json (every run) and benchmarks/results/dpo.md (the table, also printed).
Fixtures, timing and environment are those of benchmarks/sft.py (benchmarks/README.md): `common.py`'s tokenizer
and tiny/small Llama models; the pairs reuse its prompt/completion rows (prompts ≈ 64 tokens): chosen = the
row's completion, rejected = the next row's completion (64–128 tokens each). Batches are 8 pairs (tiny) and 4
(small), fp32 (or `--precision bf16`: autocast in both, TRL `bf16=True`, alignlab `model.mixed_precision=bf16`,
float32 master weights), lr 1e-4 constant, beta 0.1, max_length 256 (nothing truncated), no gradient checkpointing.

Timing: the step clock of `common.py`, counting only forwards with grad enabled (the policy's training forward;
reference forwards run without grad), so each step is one forward: over the 2B chosen+rejected rows (TRL), or
over B rows of prompt + chosen + rejected (alignlab's default: the prompt is held once). Precomputation of
reference log-probs happens before the first step, outside the window (it is in `startup_s`). pairs/s counts
pairs (steps x pairs per step); tokens/s the non-pad tokens each library feeds the model (alignlab holds each
prompt once, TRL twice: compare pairs/s).
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
WARMUP = {"tiny": 3, "small": 4}  # alignlab's first ~3 small steps are slow (first shapes, last-layer check)
STEPS = {"tiny": 20, "small": 16}
ROWS = 256  # pairs in the dataset (both libraries precompute reference log-probs for all of them)
LR, BETA, MAX_LENGTH = 1e-4, 0.1, 256
LIBS, REFS = ("alignlab", "trl"), ("live", "precomputed")
RESULTS = Path(__file__).resolve().parent / "results"
TRL_PERF_NOTES = {("tiny", "live"): 8.74, ("tiny", "precomputed"): 12.9, ("small", "live"): 1.48,
                  ("small", "precomputed"): 2.03}  # shared/PERF-NOTES.md, TRL samples (pairs)/s


def pairs_dataset(rows: int = ROWS) -> Path:
    """Preference JSONL from common.sft_dataset: chosen = row i's completion, rejected = row i+1's."""
    path = common.cache_dir() / f"dpo-pairs-{rows}.jsonl"
    if path.exists():
        return path
    src = [json.loads(line) for line in common.sft_dataset(max(1024, rows + 1)).open()][: rows + 1]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for a, b in zip(src, src[1:]):
            f.write(json.dumps({"prompt": a["prompt"], "chosen": a["completion"], "rejected": b["completion"]}) + "\n")
    tmp.rename(path)
    return path


# ---------------------------------------------------------------- inside the child


def train_trl(model_dir: Path, data: Path, a, clock, out_dir: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    clock.attach(model)
    dataset = Dataset.from_list([json.loads(line) for line in data.open()])
    args = DPOConfig(
        output_dir=out_dir, max_steps=a.total_steps, per_device_train_batch_size=a.batch_size, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=BETA,
        loss_type=["sigmoid"], precompute_ref_log_probs=a.ref == "precomputed", max_length=MAX_LENGTH,
        bf16=a.precision == "bf16", fp16=False, gradient_checkpointing=False, activation_checkpointing=False,
        report_to=[], save_strategy="no", eval_strategy="no", logging_steps=10**6, disable_tqdm=True,
        dataloader_num_workers=0, dataloader_pin_memory=False, use_cpu=True, seed=0,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    out = trainer.train()
    return {"loss": out.training_loss}


def train_alignlab(model_dir: Path, data: Path, a, clock, out_dir: str) -> dict:
    from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig
    from alignlab.recipes import preference

    build = preference.model_from_config  # the recipe builds its model: wrap the builder to attach the clock
    preference.model_from_config = lambda *args, **kw: clock.attach(build(*args, **kw))
    cfg = preference.PreferenceConfig(
        model=ModelConfig(path=str(model_dir), dtype="float32", gradient_checkpointing=False,
                          mixed_precision="bf16" if a.precision == "bf16" else "no"),
        data=DataConfig(dataset=str(data), max_length=MAX_LENGTH, eval_fraction=0.0),
        optim=OptimConfig(lr=LR, scheduler="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                          batch_size=a.batch_size, grad_accum=1, max_steps=a.total_steps),
        log=LogConfig(output_dir=out_dir, log_every=10**6, eval_every=0, save_every=0, keep_checkpoints=1,
                      tensorboard=False, wandb=False, progress=False),
        pref=preference.PreferenceOptions(loss="dpo", beta=BETA, reference="copy" if a.ref == "live" else "precomputed",
                                          ref_cache_dir=os.path.join(out_dir, "ref_cache")),  # fresh: computed
        seed=0,
    )
    last = preference.main(cfg)
    return {"loss": last.get("loss")}


def child(a) -> None:
    t_start = time.perf_counter()
    common.setup_threads(a.threads)
    from transformers import AutoTokenizer

    model_dir = Path(a.model_dir)
    clock = common.GradClock(AutoTokenizer.from_pretrained(model_dir).pad_token_id, a.progress_file, a.total_steps)
    with tempfile.TemporaryDirectory(prefix=f"bench-dpo-{a.lib}-") as out_dir:
        extra = (train_trl if a.lib == "trl" else train_alignlab)(model_dir, Path(a.data), a, clock, out_dir)
    window = clock.window(a.warmup, a.steps)
    window["pairs"] = a.steps * a.batch_size  # rows per pair differ: TRL 2 (prompt twice), alignlab 1 (shared)
    result = {"lib": a.lib, "model": a.model, "ref": a.ref, "precision": a.precision, "batch_size": a.batch_size,
              "warmup": a.warmup,
              "steps": a.steps, **window, **extra, "peak_rss_mb": round(common.peak_rss_mb(), 1),
              "startup_s": round(clock.calls[0][0] - t_start, 2) if clock.calls else None}
    Path(a.out).write_text(json.dumps(result))


# ---------------------------------------------------------------- the parent


def metrics(run: dict, model: str, clock: str = "wall") -> dict:
    """Per-run numbers; with clock="cpu" the seconds are the child's CPU time (all its threads), which holds up
    better than wall time on a machine shared with other work (use it with --threads 1)."""
    s = run["seconds"] if clock == "wall" else run["cpu_seconds"]
    return {"samples_per_s": run.get("pairs", run["samples"] / 2) / s, "tokens_per_s": run["tokens"] / s,
            "peak_rss_mb": run["peak_rss_mb"], "padding_pct": 100 * (1 - run["tokens"] / run["padded_tokens"]),
            "startup_s": run.get("startup_s") or float("nan")}


def summarize(runs: list[dict], clock: str) -> list[dict]:
    rows = []
    for key in sorted({(r["model"], r["ref"], r["lib"]) for r in runs},
                      key=lambda k: (list(common.MODELS).index(k[0]), REFS.index(k[1]), k[2] != "trl")):
        same = [r for r in runs if (r["model"], r["ref"], r["lib"]) == key]
        ok = [r for r in same if "error" not in r]
        row = {"model": key[0], "ref": key[1], "lib": key[2], "batch_size": BATCH[key[0]], "runs": len(ok)}
        if not ok:
            rows.append({**row, "error": same[-1]["error"]})
            continue
        ms = [metrics(r, key[0], clock) for r in ok]
        row.update({k: common.median([m[k] for m in ms]) for k in ms[0]})
        row["samples_per_s_range"] = [min(m["samples_per_s"] for m in ms), max(m["samples_per_s"] for m in ms)]
        row["loss"] = common.median([r["loss"] for r in ok if r.get("loss") is not None] or [float("nan")])
        row["foreign_cores"] = max(r.get("foreign_cores", 0.0) for r in ok)
        rows.append(row)
    for row in rows:
        ref = next((r for r in rows if r["lib"] == "trl" and (r["model"], r["ref"]) == (row["model"], row["ref"])
                    and "samples_per_s" in r), None)
        if ref and "samples_per_s" in row:
            row["speedup_vs_trl"] = row["samples_per_s"] / ref["samples_per_s"]
            row["rss_vs_trl"] = row["peak_rss_mb"] / ref["peak_rss_mb"]
    return rows


def markdown(summary: list[dict], info: dict, settings: dict) -> str:
    lines = [
        "# DPO benchmark: alignlab vs TRL", "",
        f"{info['date']} · {info['cpu']} ({info['cores']} cores) · {info['threads']} threads · torch {info['torch']} "
        f"· transformers {info['transformers']} · trl {info['trl']} · alignlab {info['alignlab_commit']}", "",
        f"Command: `{settings['command']}`  ", f"Load average before / after: {settings['loadavg']}  ",
        f"Steps: warm-up {settings['warmup']}, measured {settings['steps']}; median of {settings['repeats']} fresh "
        f"processes; {settings['env']}; {settings['clock']} clock; {settings.get('precision', 'fp32')}.", "",
        "| model | reference | library | pairs/step | pairs/s | range | tokens/s | peak RSS MB | pairs/s vs TRL "
        "| RSS vs TRL | padding % | start-up s | loss | other load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        if "samples_per_s" not in r:
            lines.append(f"| {r['model']} | {r['ref']} | {r['lib']} | {r['batch_size']} | failed: {r['error'][:80]} |")
            continue
        lo, hi = r["samples_per_s_range"]
        rel = f"{r['speedup_vs_trl']:.2f}×" if r["lib"] != "trl" and "speedup_vs_trl" in r else ""
        rss = f"{r['rss_vs_trl']:.2f}×" if r["lib"] != "trl" and "rss_vs_trl" in r else ""
        lines.append(f"| {r['model']} | {r['ref']} | {r['lib']} | {r['batch_size']} | {r['samples_per_s']:.2f} | "
                     f"{lo:.2f}–{hi:.2f} | {r['tokens_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} | {rel} | {rss} | "
                     f"{r['padding_pct']:.0f} | {r['startup_s']:.1f} | {r['loss']:.4f} | {r['foreign_cores']:.2f} |")
    notes = ", ".join(f"{m} {ref} {v}" for (m, ref), v in TRL_PERF_NOTES.items())
    lines += ["", "pairs/s: preference pairs per second in the measured window; tokens/s: non-pad tokens fed to "
              "the model (alignlab holds each prompt once, TRL twice). *other load*: CPU cores other processes used "
              "during the run (above ~0.1 wall-clock numbers are disturbed). Target: ≥ 2× TRL pairs/s at ≤ TRL peak "
              f"RSS. PERF-NOTES TRL pairs/s (2 threads, wall clock, idle machine): {notes}."]
    if settings.get("note"):
        lines += ["", settings["note"]]
    met = [f"{r['model']} {r['ref']}: {'met' if r['speedup_vs_trl'] >= 2 and r['rss_vs_trl'] <= 1 else 'not met'}"
           for r in summary if r["lib"] == "alignlab" and "speedup_vs_trl" in r]
    return "\n".join(lines + (["", "Target: " + "; ".join(met) + "."] if met else [])) + "\n"


def parent(a) -> None:
    models, refs, libs = a.models.split(","), a.refs.split(","), a.libs.split(",")
    for value, allowed in ((models, common.MODELS), (refs, REFS), (libs, LIBS)):
        if any(v not in allowed for v in value):
            sys.exit(f"unknown {value}; choose from {list(allowed)}")
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = common.child_env(a.threads, a.glibc_tunables)
    print("building fixtures (cached after the first run) ...", file=sys.stderr)
    data, model_dirs = pairs_dataset(), {m: common.model_dir(m) for m in models}
    load_before = os.getloadavg()
    runs, t0 = [], time.perf_counter()
    jobs = [(r, m, ref, lib) for r in range(a.repeats) for m in models for ref in refs for lib in libs]
    for i, (rep, m, ref, lib) in enumerate(jobs, 1):
        label = f"[{i:2d}/{len(jobs)}] {m:5s} {ref:11s} {lib:8s} {a.precision} #{rep + 1}"
        stem = f"{common.results_stem('dpo', a.precision)}-{m}-{ref}-{lib}-{rep + 1}"
        warmup, steps = a.warmup or WARMUP[m], a.steps or STEPS[m]
        argv = [str(Path(__file__).resolve()), "--child", "--lib", lib, "--model", m, "--ref", ref,
                "--model-dir", str(model_dirs[m]), "--data", str(data), "--batch-size", str(BATCH[m]),
                "--warmup", str(warmup), "--steps", str(steps), "--total-steps", str(warmup + steps + 1),
                "--threads", str(a.threads), "--precision", a.precision, "--out", str(log_dir / f"{stem}.json"),
                "--progress-file", str(log_dir / "progress")]
        if a.wait_idle:
            common.wait_idle(a.wait_idle, a.max_load)
        res = common.run_child(argv, env=env, log_path=log_dir / f"{stem}.log", label=label)
        res.update(model=m, ref=ref, lib=lib, repeat=rep + 1, loadavg=os.getloadavg()[0])
        runs.append(res)
        msg = (f"FAILED ({res['error']}) " + " | ".join(res["log_tail"][-3:]) if "error" in res else
               "{samples_per_s:6.2f} pairs/s {tokens_per_s:8,.0f} tok/s RSS {peak_rss_mb:6,.0f} MB".format(
                   **metrics(res, m, a.clock)) + f"  other load {res['foreign_cores']:.2f}")
        print(f"{label} {res['wall_s']:5.0f}s {msg}  [{time.perf_counter() - t0:4.0f}s total]", file=sys.stderr)
    settings = {"command": "python benchmarks/dpo.py " + " ".join(sys.argv[1:]), "repeats": a.repeats,
                "warmup": {m: a.warmup or WARMUP[m] for m in models}, "steps": {m: a.steps or STEPS[m] for m in models},
                "loadavg": f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}", "batch_pairs": BATCH, "lr": LR,
                "beta": BETA, "max_length": MAX_LENGTH, "clock": a.clock, "note": a.note, "precision": a.precision,
                "env": f"OMP_NUM_THREADS={a.threads}" + (", GLIBC_TUNABLES set" if a.glibc_tunables else
                                                         ", no allocator tunables")}
    out = RESULTS / common.results_stem("dpo", a.precision)
    previous = out.with_suffix(".json")
    if a.merge and previous.exists():
        old = json.loads(previous.read_text())
        redone = {(m, ref, lib) for m in models for ref in refs for lib in libs}
        runs = [r for r in old["runs"] if (r["model"], r["ref"], r["lib"]) not in redone and "error" not in r] + runs
        for key in ("warmup", "steps"):  # the merged runs' settings too
            settings[key] = {**old["settings"].get(key, {}), **settings[key]}
    summary, info = summarize(runs, a.clock), common.machine_info(a.threads)
    out.with_suffix(".json").write_text(json.dumps({"machine": info, "settings": settings, "summary": summary,
                                                  "runs": runs}, indent=1))
    md = markdown(summary, info, settings)
    out.with_suffix(".md").write_text(md)
    print(md)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.harness_args(ap, warmup=WARMUP, steps=STEPS)
    ap.add_argument("--refs", default="live,precomputed", help="comma-separated: live,precomputed")
    ap.add_argument("--note", default="", help="a line written under the table (e.g. the machine's load)")
    ap.add_argument("--precision", choices=common.PRECISIONS, default="fp32",
                    help="fp32, or bf16 autocast in both libraries (results go to results/dpo-bf16.json/.md)")
    ap.add_argument("--merge", action="store_true",
                    help="keep results/dpo.json's runs of the (model, reference, library) combinations not rerun")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--lib", "--model", "--ref", "--model-dir", "--data", "--out", "--progress-file"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    for name in ("--batch-size", "--total-steps"):
        ap.add_argument(name, type=int, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    child(args) if args.child else parent(args)
