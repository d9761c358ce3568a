"""Generation speed: alignlab's NativeEngine against transformers `generate`, same model, prompts and settings.

Run (from the repository root):
    python benchmarks/generate.py                          # tiny + small, batch 8 and 32, 3 fresh processes each
    python benchmarks/generate.py --repeats 1              # a quick look
    python benchmarks/generate.py --models small --batches 8 --profile   # ms/step by phase and op kind
    python benchmarks/generate.py --models small --threads 1 --clock cpu --profile --repeats 1  # busy machine
    python benchmarks/generate.py --threads 1 --clock cpu  # CPU-time fallback on a busy machine
    python benchmarks/generate.py --models small --dtype bf16 --threads 1 --clock cpu --name generate-bf16-profile

Writes benchmarks/results/generate.json (every run) and benchmarks/results/generate.md (the table, also printed);
with --profile, generate-profile.{json,md} instead, with a per-step breakdown of each run (torch.profiler; the
native engine marks its phases pack_weights, prefill, sample, decode_step, drop_rows) and op tables in
results/logs/*.profile.txt.
Fixtures are `common.py`'s (benchmarks/README.md): the vocab-4096 tokenizer, the tiny and small random Llamas, and
the prompts of its prompt/completion JSONL (64 tokens each, + BOS). Every run samples (temperature 1, no top-k or
top-p) exactly `--new-tokens` tokens per prompt (EOS suppressed: `min_new_tokens` = `max_new_tokens` on both
sides), one prompt per row. Weights are float32; with `--dtype bf16` both engines sample in bfloat16 (native:
`NativeEngine(..., dtype="bf16")`, bf16 copies of the weights made per call, included in the timing; hf: the same
per-call bf16 copy, `alignlab.rollout.rollout_weights`, around `model.generate`).

- *native*: `alignlab.rollout.NativeEngine(model, tokenizer, batch_size=B).generate(prompts, 1, sampling)`.
- *hf*: `model.generate(input_ids, attention_mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
  max_new_tokens=N, min_new_tokens=N)`: plain transformers with its default (dynamic) KV cache.

Timing: each fresh child process loads the model, runs one warm-up call, then `--calls` timed calls (different
prompts each); tokens/s = generated tokens / wall seconds of the timed calls (prefill included: it is part of
every rollout). ms/token-step = seconds per call / new tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import common

LIBS = ("native", "hf")
DTYPES = ("auto", "bf16")  # rollout precision (--dtype): the fp32 weights, or per-call bfloat16 copies
RESULTS = Path(__file__).resolve().parent / "results"
HF_PERF_NOTES = {("small", 8): 274, ("small", 32): 426, ("tiny", 8): 1870, ("tiny", 32): 3168}  # tok/s
TARGETS = {("small", 8): 3.0, ("small", 32): 2.0}  # native tokens/s over hf


# ---------------------------------------------------------------- inside the child


def child(a) -> None:
    common.setup_threads(a.threads)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.rollout import NativeEngine, Sampling, rollout_weights

    tok = AutoTokenizer.from_pretrained(a.model_dir)
    tok.padding_side = "left"  # for hf generate; NativeEngine pads its own way
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32).eval()
    rows = [json.loads(line)["prompt"] for line in Path(a.data).open()]
    batches = [rows[i * a.batch_size:(i + 1) * a.batch_size] for i in range(a.calls + 1)]
    n_new = a.new_tokens
    if a.lib == "native":
        if a.onednn == "off":  # A/B of the fused step's weight layout: plain MKL products only
            from alignlab.rollout import fused
            fused.ONEDNN = False
        engine = NativeEngine(model, tok, batch_size=a.batch_size, dtype=a.dtype)
        sampling = Sampling(max_new_tokens=n_new, min_new_tokens=n_new, temperature=1.0)

        def run(prompts: list[str], seed: int) -> int:
            return int(engine.generate(prompts, 1, sampling, seed=seed).response_mask.sum())
    else:
        def run(prompts: list[str], seed: int) -> int:
            torch.manual_seed(seed)
            enc = tok(prompts, return_tensors="pt", padding=True)
            with torch.no_grad(), rollout_weights(model, a.dtype):
                out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                     max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=tok.pad_token_id)
            return int(out[:, enc["input_ids"].shape[1]:].numel())

    run(batches[0], 0)  # warm-up
    t0, c0, tokens, per_call = time.perf_counter(), time.process_time(), 0, []
    for k, prompts in enumerate(batches[1:], 1):
        s = time.perf_counter()
        tokens += run(prompts, k)
        per_call.append(time.perf_counter() - s)
        Path(a.progress_file).write_text(f"{k}/{a.calls}")
    result = {"lib": a.lib, "dtype": a.dtype, "model": a.model, "batch_size": a.batch_size, "new_tokens": n_new,
              "calls": a.calls,
              "tokens": tokens, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
              "call_seconds": per_call, "peak_rss_mb": round(common.peak_rss_mb(), 1)}
    if a.profile:  # one more call, profiled, after the timed ones (which the profiler would slow)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            run(batches[1], 1)
        path = Path(a.out).with_suffix(".profile.txt")
        result["breakdown_ms_per_step"] = parts = breakdown(prof.events(), n_new)
        path.write_text(f"torch.profiler over one generate call of {a.batch_size} x {n_new} tokens "
                        "(wall clock, profiler overhead included)\n\n## ms per token step by phase and "
                        "op kind\n" + "\n".join(f"{k:40s} {v:8.2f}" for k, v in parts.items())
                        + "\n\n## by self CPU time\n"
                        + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
                        + "\n\n## by input shape\n" + prof.key_averages(group_by_input_shape=True).table(
                            sort_by="self_cpu_time_total", row_limit=30))
        result["profile"] = str(path)
    Path(a.out).write_text(json.dumps(result))


OP_KINDS = (("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise")),
            ("attention", ("aten::_scaled_dot_product", "aten::_flash_attention")),
            ("weight packing", ("mkldnn::_reorder_linear_weight",)),
            ("copies (cache writes, row drops, cat)", ("aten::copy_", "aten::index_select", "aten::cat",
                                                       "aten::index", "aten::index_put_", "aten::clone")))


def breakdown(events, steps: int) -> dict[str, float]:
    """Self time of profiled ops in ms per token step, keyed "phase / op kind": the phase is the outermost
    `alignlab.*` region around the op (NativeEngine marks pack_weights, prefill, sample, decode_step, drop_rows;
    HF generate has none: "outside"), the kind comes from the op name (OP_KINDS, else "other ops")."""
    totals: dict[str, float] = {}
    for ev in events:
        if ev.name.startswith("alignlab."):
            continue
        phase, parent = "outside", ev.cpu_parent
        while parent is not None:
            if parent.name.startswith("alignlab."):
                phase = parent.name.removeprefix("alignlab.")
            parent = parent.cpu_parent
        kind = next((k for k, names in OP_KINDS if ev.name.startswith(names)), "other ops")
        key = f"{phase} / {kind}"
        totals[key] = totals.get(key, 0.0) + ev.self_cpu_time_total / 1e3 / steps
    totals = dict(sorted(totals.items(), key=lambda kv: -kv[1]))
    return {**totals, "total": sum(totals.values())}


# ---------------------------------------------------------------- the parent


def metrics(run: dict, clock: str) -> dict:
    s = run["seconds"] if clock == "wall" else run["cpu_seconds"]
    return {"tokens_per_s": run["tokens"] / s, "ms_per_step": 1e3 * s / run["calls"] / run["new_tokens"],
            "peak_rss_mb": run["peak_rss_mb"]}


def _key(r: dict) -> tuple:
    return r["model"], r["batch_size"], r["lib"], r.get("dtype", "auto")


def summarize(runs: list[dict], clock: str) -> list[dict]:
    """Median per (model, batch, engine, dtype); speed-ups are against hf at the same dtype and against fp32 hf."""
    rows = []
    for key in sorted({_key(r) for r in runs},
                      key=lambda k: (list(common.MODELS).index(k[0]), k[1], LIBS.index(k[2]), k[3])):
        ok = [r for r in runs if _key(r) == key and "error" not in r]
        row = {"model": key[0], "batch_size": key[1], "lib": key[2], "dtype": key[3], "runs": len(ok)}
        if not ok:
            rows.append({**row, "error": next(r["error"] for r in runs if _key(r) == key)})
            continue
        ms = [metrics(r, clock) for r in ok]
        row.update({k: common.median([m[k] for m in ms]) for k in ms[0]})
        row["tokens_per_s_range"] = [min(m["tokens_per_s"] for m in ms), max(m["tokens_per_s"] for m in ms)]
        row["foreign_cores"] = max(r.get("foreign_cores", 0.0) for r in ok)
        rows.append(row)
    for row in rows:
        for field, dtype in (("speedup_vs_hf", row["dtype"]), ("speedup_vs_hf_fp32", "auto")):
            ref = next((r for r in rows if r["lib"] == "hf" and _key(r) == (row["model"], row["batch_size"], "hf",
                                                                             dtype) and "tokens_per_s" in r), None)
            if ref and "tokens_per_s" in row:
                row[field] = row["tokens_per_s"] / ref["tokens_per_s"]
    return rows


def markdown(summary: list[dict], info: dict, settings: dict, runs: list[dict] | None = None) -> str:
    lines = [
        "# Generation benchmark: NativeEngine vs transformers generate", "",
        f"{info['date']} · {info['cpu']} ({info['cores']} cores) · {info['threads']} threads · torch {info['torch']} "
        f"· transformers {info['transformers']} · alignlab {info['alignlab_commit']}", "",
        f"Command: `{settings['command']}`  ", f"Load average before / after: {settings['loadavg']}  ",
        f"{settings['new_tokens']} sampled tokens per prompt (EOS suppressed), prompts of 64 tokens + BOS, "
        f"{settings.get('dtype', 'fp32')}; "
        f"{settings['calls']} timed calls after one warm-up per process; median of {settings['repeats']} fresh "
        f"processes; {settings['env']}; {settings['clock']} clock.", "",
        "| model | batch | engine | dtype | tokens/s | range | ms / token step | speed-up vs hf (same dtype) | "
        "vs hf fp32 | peak RSS MB | other load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['model']} | {r['batch_size']} | {r['lib']} | {r['dtype']} | failed: "
                         f"{r['error'][:80]} |")
            continue
        lo, hi = r["tokens_per_s_range"]
        rel = f"{r['speedup_vs_hf']:.2f}×" if r["lib"] != "hf" and "speedup_vs_hf" in r else ""
        rel32 = f"{r['speedup_vs_hf_fp32']:.2f}×" if "speedup_vs_hf_fp32" in r and _key(r)[2:] != ("hf", "auto") else ""
        dtype = "fp32" if r["dtype"] == "auto" else r["dtype"]
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['lib']} | {dtype} | {r['tokens_per_s']:,.0f} | "
                     f"{lo:,.0f}–{hi:,.0f} | {r['ms_per_step']:.1f} | {rel} | {rel32} | {r['peak_rss_mb']:,.0f} | "
                     f"{r['foreign_cores']:.2f} |")
    notes = ", ".join(f"{m} b{b} {v}" for (m, b), v in HF_PERF_NOTES.items())
    lines += ["", "tokens/s: generated tokens per second over the timed calls (prefill included). *other load*: CPU "
              "cores other processes used during the run (above ~0.1 the numbers are disturbed). PERF-NOTES HF "
              f"generate tokens/s on a quiet machine (2 threads): {notes}."]
    met = []
    for r in summary:
        target = TARGETS.get((r["model"], r["batch_size"]))
        if r["lib"] == "native" and "speedup_vs_hf_fp32" in r and target:
            verdict = "met" if r["speedup_vs_hf_fp32"] >= target else "not met"
            met.append(f"{r['model']} batch {r['batch_size']} native {r['dtype']} ≥ {target:.0f}× hf fp32: {verdict} "
                       f"({r['speedup_vs_hf_fp32']:.2f}×)")
    note = ["", f"**Note:** {settings['note']}"] if settings.get("note") else []
    return "\n".join(lines + (["", "Targets: " + "; ".join(met) + "."] if met else []) + note
                     + profile_tables(runs or [], settings["clock"])) + "\n"


def profile_tables(runs: list[dict], clock: str) -> list[str]:
    """With --profile: per run, ms per token step by phase / op kind. The profiler's (wall-clock) shares are scaled
    to the run's own ms/step on the chosen clock, so that with --clock cpu they add up to CPU time."""
    lines = []
    for r in runs:
        parts = r.get("breakdown_ms_per_step")
        if not parts:
            continue
        scale = metrics(r, clock)["ms_per_step"] / parts["total"]
        lines += ["", f"### {r['model']} b{r['batch_size']} {r['lib']} {r.get('dtype', 'auto')} #{r['repeat']}: "
                  f"ms per token step ({clock} clock; profiler overhead removed by scaling)", "",
                  "| phase / op kind | ms | share |", "|---|---|---|"]
        lines += [f"| {k} | {v * scale:.2f} | {v / parts['total']:.0%} |" for k, v in parts.items() if k != "total"]
    return lines


def parent(a) -> None:
    models, libs = a.models.split(","), a.libs.split(",")
    batches, dtypes = [int(b) for b in a.batches.split(",")], a.dtype.split(",")
    for value, allowed in ((models, common.MODELS), (libs, LIBS), (dtypes, DTYPES)):
        if any(v not in allowed for v in value):
            sys.exit(f"unknown {value}; choose from {list(allowed)}")
    if a.clock == "cpu" and a.threads != 1:
        sys.exit("--clock cpu needs --threads 1 (with more threads, spinning OpenMP workers inflate CPU time)")
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = common.child_env(a.threads, a.glibc_tunables)
    print("building fixtures (cached after the first run) ...", file=sys.stderr)
    data, model_dirs = common.sft_dataset(1024), {m: common.model_dir(m) for m in models}
    load_before = os.getloadavg()
    runs, t0 = [], time.perf_counter()
    jobs = [(r, m, b, lib, d) for r in range(a.repeats) for m in models for b in batches for lib in libs
            for d in dtypes]
    for i, (rep, m, b, lib, dtype) in enumerate(jobs, 1):
        tag = "" if dtype == "auto" else f"-{dtype}"
        label = f"[{i:2d}/{len(jobs)}] {m:5s} b{b:<3d} {lib:6s} {dtype:4s} #{rep + 1}"
        stem = f"generate-{m}-b{b}-{lib}{tag}-{rep + 1}"
        argv = [str(Path(__file__).resolve()), "--child", "--lib", lib, "--model", m, "--model-dir",
                str(model_dirs[m]), "--data", str(data), "--batch-size", str(b), "--calls", str(a.calls),
                "--new-tokens", str(a.new_tokens), "--threads", str(a.threads), "--out", str(log_dir / f"{stem}.json"),
                "--progress-file", str(log_dir / "progress"), "--onednn", a.onednn,
                "--dtype", dtype]
        argv += ["--profile"] if a.profile else []
        if a.wait_idle:
            common.wait_idle(a.wait_idle, a.max_load)
        res = common.run_child(argv, env=env, log_path=log_dir / f"{stem}.log", label=label)
        res.update(model=m, batch_size=b, lib=lib, dtype=dtype, repeat=rep + 1, loadavg=os.getloadavg()[0])
        runs.append(res)
        msg = (f"FAILED ({res['error']}) " + " | ".join(res["log_tail"][-3:]) if "error" in res else
               "{tokens_per_s:8,.0f} tok/s {ms_per_step:6.1f} ms/step".format(**metrics(res, a.clock))
               + f"  other load {res['foreign_cores']:.2f}")
        print(f"{label} {res['wall_s']:5.0f}s {msg}  [{time.perf_counter() - t0:4.0f}s total]", file=sys.stderr)
    argv = [x for i, x in enumerate(sys.argv[1:]) if x != "--note" and (i == 0 or sys.argv[i] != "--note")]
    settings = {"command": "python benchmarks/generate.py " + " ".join(argv), "repeats": a.repeats,
                "calls": a.calls, "new_tokens": a.new_tokens, "clock": a.clock, "note": a.note,
                "loadavg": f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}",
                "env": f"OMP_NUM_THREADS={a.threads}" + (", GLIBC_TUNABLES set" if a.glibc_tunables else
                                                         ", no allocator tunables")
                + ("" if a.onednn == "auto" else ", native decode weights plain (--onednn off)"),
                "dtype": "fp32" if a.dtype == "auto" else f"fp32 weights, rollout dtypes {a.dtype} (bf16: per-call "
                "bfloat16 copies, both engines)"}
    summary, info = summarize(runs, a.clock), common.machine_info(a.threads)
    name = a.name or ("generate-profile" if a.profile else "generate")
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": info, "settings": settings, "summary": summary,
                                                       "runs": runs}, indent=1))
    md = markdown(summary, info, settings, runs)
    (RESULTS / f"{name}.md").write_text(md)
    print(md)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny,small", help="comma-separated: tiny,small")
    ap.add_argument("--batches", default="8,32", help="comma-separated prompts per generate call")
    ap.add_argument("--libs", default="native,hf", help="comma-separated: native,hf")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per configuration (median)")
    ap.add_argument("--calls", type=int, default=3, help="timed generate calls per process (after one warm-up)")
    ap.add_argument("--new-tokens", type=int, default=64, help="sampled tokens per prompt (EOS suppressed)")
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads, same for both engines")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall clock, or the child's CPU time (with --threads 1; a fallback on a busy machine)")
    ap.add_argument("--glibc-tunables", action="store_true", help="GLIBC_TUNABLES of PERF-NOTES §2, for both")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="before each run, wait up to this long for other processes to go quiet")
    ap.add_argument("--max-load", type=float, default=0.15, metavar="CORES", help="what --wait-idle calls quiet")
    ap.add_argument("--profile", action="store_true",
                    help="torch.profiler over one more call after the timed ones: ms per step by phase and op "
                         "kind, and op tables, in results/logs/*.profile.txt")
    ap.add_argument("--onednn", choices=("auto", "off"), default="auto",
                    help="native: oneDNN-packed decode weights for big float32 models (auto), or plain MKL (off)")
    ap.add_argument("--dtype", default="auto",
                    help="comma-separated rollout precisions, each run on both engines: auto (the fp32 weights) or "
                         "bf16 (per-call bfloat16 copies); e.g. auto,bf16")
    ap.add_argument("--name", default="", help="results/<name>.{json,md} (default generate, with --profile "
                    "generate-profile: profiled timings never overwrite the plain results)")
    ap.add_argument("--note", default="", help="a sentence added to the markdown (e.g. the machine's state)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--lib", "--model", "--model-dir", "--data", "--out", "--progress-file"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    for name in ("--batch-size",):
        ap.add_argument(name, type=int, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    child(args) if args.child else parent(args)
