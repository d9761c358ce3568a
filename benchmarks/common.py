"""Shared pieces of the benchmarks: fixtures, the step clock, the matmul-peak probe, fresh-process runs.

Everything a benchmark needs is rebuilt here from seeds (no downloads): a byte-level BPE tokenizer of
vocab 4096 trained on a synthetic corpus, the `tiny` and `small` Llama models with random weights, and a
prompt/completion JSONL. Fixtures are cached under `$ALIGNLAB_BENCH_CACHE` (default
`~/.cache/alignlab/bench`), keyed by `FIXTURE_VERSION` and their sizes, so a rerun reuses them.

Every measurement runs in a fresh `python` child with the same environment for every library
(`child_env`): thread counts pinned, tokenizers' own thread pool off, and allocator tunables only when the
caller asks for them, then for all libraries alike.
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

FIXTURE_VERSION = 1
VOCAB_SIZE = 4096
MAX_POSITIONS = 512
PROMPT_TOKENS = 64
COMPLETION_TOKENS = (64, 128)  # inclusive range of completion tokens, EOS not counted

# The two benchmark models (Llama, untied embeddings, random weights). `tiny` has 1.57M matmul parameters,
# `small` 45.1M, as in shared/PERF-NOTES.md.
MODELS = {
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512),
    "small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=2816),
}

# --precision of the DPO / RM harnesses: fp32, or bf16 autocast in both libraries (TRL `bf16=True`, alignlab
# `model.mixed_precision=bf16`; master weights stay float32). Results of a bf16 run go to `<name>-bf16.json/.md`.
PRECISIONS = ("fp32", "bf16")


def results_stem(name: str, precision: str) -> str:
    """Stem of a harness's result files: `dpo` for fp32, `dpo-bf16` for bf16."""
    return name if precision == "fp32" else f"{name}-{precision}"


# Allocator tunables from PERF-NOTES §2 (glibc keeps big buffers instead of returning them to the OS).
GLIBC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def cache_dir() -> Path:
    base = os.environ.get("ALIGNLAB_BENCH_CACHE") or Path.home() / ".cache" / "alignlab" / "bench"
    path = Path(base) / f"v{FIXTURE_VERSION}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- fixtures


def _lexicon(rng: random.Random, n: int = 6000) -> list[str]:
    """Pronounceable random words, distinct, 1-4 syllables."""
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
              "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng"]
    words: set[str] = set()
    while len(words) < n:
        k = rng.choice([1, 2, 2, 3, 3, 4])
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(k)))
    return sorted(words)


def _fresh_tmp(path: Path) -> Path:
    """An empty sibling directory to build `path` in, renamed into place when complete."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


class _Text:
    """Zipf-distributed word streams over a fixed lexicon (seeded)."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.words = _lexicon(self.rng)
        self.weights = [1.0 / (r + 1) ** 1.05 for r in range(len(self.words))]

    def sample(self, n: int) -> list[str]:
        return self.rng.choices(self.words, weights=self.weights, k=n)

    def sentence(self) -> str:
        return " ".join(self.sample(self.rng.randint(6, 18))) + "."


def tokenizer_dir() -> Path:
    """A byte-level BPE tokenizer (vocab 4096) trained by `alignlab.lab.tokenizer.build_tokenizer` on a
    synthetic corpus; saved with `save_pretrained`, so `AutoTokenizer.from_pretrained` loads it."""
    path = cache_dir() / "tokenizer"
    if (path / "tokenizer.json").exists():
        return path
    from alignlab.lab.tokenizer import build_tokenizer

    text = _Text(seed=0)
    corpus = [text.sentence() for _ in range(40_000)]
    tok = build_tokenizer(corpus, vocab_size=VOCAB_SIZE)
    if len(tok) != VOCAB_SIZE:
        raise RuntimeError(f"benchmark tokenizer has {len(tok)} tokens, expected {VOCAB_SIZE}")
    tmp = _fresh_tmp(path)
    tok.save_pretrained(tmp)
    tmp.rename(path)
    return path


def llama_config(name: str):
    from transformers import LlamaConfig

    ids = _special_ids()
    return LlamaConfig(vocab_size=VOCAB_SIZE, max_position_embeddings=MAX_POSITIONS,
                       tie_word_embeddings=False, pad_token_id=ids["pad"], eos_token_id=ids["eos"],
                       bos_token_id=ids["bos"], **MODELS[name])


def _special_ids() -> dict[str, int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir())
    return {"pad": tok.pad_token_id, "eos": tok.eos_token_id, "bos": tok.bos_token_id}


def model_dir(name: str) -> Path:
    """`name` ("tiny" or "small") with random weights (seed 0), in fp32 safetensors, with the tokenizer
    beside it so that either library loads both from one path."""
    path = cache_dir() / f"model-{name}"
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(name)).float()
    tmp = _fresh_tmp(path)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(tokenizer_dir()).save_pretrained(tmp)
    tmp.rename(path)
    return path


def matmul_params(name: str) -> int:
    """Parameters in matmuls (every Linear, LM head included; embeddings and norms excluded): the N in
    6·N·tokens."""
    m = MODELS[name]
    h, i, layers = m["hidden_size"], m["intermediate_size"], m["num_hidden_layers"]
    return layers * (4 * h * h + 3 * h * i) + h * VOCAB_SIZE


def sft_dataset(rows: int, seed: int = 0) -> Path:
    """JSONL of {"prompt", "completion"}: prompts of ~64 tokens, completions of 64-128 tokens (uniform),
    both measured with the benchmark tokenizer (EOS not included). Completions start with a space, so
    tokenizing prompt and completion apart or together gives the same tokens."""
    path = cache_dir() / f"sft-{rows}-s{seed}.jsonl"
    if path.exists():
        return path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir())
    text = _Text(seed=seed)
    cost = {w: len(tok(" " + w, add_special_tokens=False)["input_ids"]) for w in text.words}

    def words_for(n_tokens: int) -> str:
        out, used, tries = [], 0, 0
        while used < n_tokens and tries < 10_000:
            (w,) = text.sample(1)
            tries += 1
            if used + cost[w] <= n_tokens:  # resample words that would overshoot: lengths come out exact
                out.append(w)
                used += cost[w]
        return " " + " ".join(out)

    lo, hi = COMPLETION_TOKENS
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for _ in range(rows):
            prompt = words_for(PROMPT_TOKENS).lstrip(" ")
            completion = words_for(text.rng.randint(lo, hi))
            f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    tmp.rename(path)
    return path


def dataset_stats(path: Path) -> dict:
    """Mean/min/max prompt and completion tokens of a JSONL, with the benchmark tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir())
    rows = [json.loads(line) for line in path.open()]
    p = [len(x) for x in tok([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]]
    c = [len(x) for x in tok([r["completion"] for r in rows], add_special_tokens=False)["input_ids"]]
    return {"rows": len(rows), "prompt_tokens": [min(p), sum(p) / len(p), max(p)],
            "completion_tokens": [min(c), sum(c) / len(c), max(c)]}


# ---------------------------------------------------------------- measurement inside a child


def setup_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepClock:
    """Timestamps every training forward without touching either library's loop: a forward pre-hook on the
    model's input embedding records (time, non-pad tokens, padded tokens, sequences) each call. With one
    forward per optimizer step (no gradient accumulation, no eval, no checkpointing recompute), calls[k]
    marks the start of step k, so steps [w, w+m) span calls[w] .. calls[w+m]: each library is timed over
    the same work: m forwards, backwards, optimizer steps and m batch fetches."""

    def __init__(self, pad_id: int, progress_path: str | None = None, total: int = 0):
        self.pad_id = pad_id
        # (wall s, non-pad tokens, padded tokens, sequences, CPU s, minor page faults) per forward
        self.calls: list[tuple[float, int, int, int, float, int]] = []
        self.total = total
        self.model = None
        self.on_step = None  # optional callable(k) run at the start of forward k (0-based), before timing
        self._rss_mark, self.rss_at_mark = None, None
        self._fd = os.open(progress_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) if progress_path else None

    def attach(self, model):
        self.model = model
        model.get_input_embeddings().register_forward_pre_hook(self._hook)
        return model

    def _hook(self, module, args):
        if self.on_step is not None:
            self.on_step(len(self.calls))
        if self._rss_mark == len(self.calls):
            self.rss_at_mark = peak_rss_mb()
        now, cpu = time.perf_counter(), time.process_time()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ids = args[0]
        real = int((ids != self.pad_id).sum())
        self.calls.append((now, real, ids.numel(), ids.shape[0], cpu, faults))
        if self._fd is not None:
            os.pwrite(self._fd, f"{len(self.calls)}/{self.total}      ".encode(), 0)

    def mark_rss_at(self, k: int) -> None:
        """Also record the peak RSS so far at the start of forward k (the end of the measured window)."""
        self._rss_mark = k

    def window(self, warmup: int, steps: int) -> dict:
        """Wall and CPU seconds (all threads of this process), tokens, sequences and minor page faults of
        steps [warmup, warmup + steps)."""
        if len(self.calls) < warmup + steps + 1:
            raise RuntimeError(f"saw {len(self.calls)} forwards, need {warmup + steps + 1}")
        sel = self.calls[warmup : warmup + steps]
        end, start = self.calls[warmup + steps], self.calls[warmup]
        return {"seconds": end[0] - start[0], "cpu_seconds": end[4] - start[4],
                "minor_faults_per_step": (end[5] - start[5]) / steps,
                "tokens": sum(c[1] for c in sel), "padded_tokens": sum(c[2] for c in sel),
                "samples": sum(c[3] for c in sel), "forwards": len(self.calls),
                "step_seconds": [b[0] - a[0] for a, b in zip(self.calls, self.calls[1:])]}


# ---------------------------------------------------------------- matmul peak


def probe_shapes() -> dict[str, tuple[int, int, int]]:
    """(M, K, N) of the models' own matmuls at their benchmark batch (≈160 tokens per sequence), plus a
    large square one."""
    t_tiny, t_small = 16 * 160, 8 * 160
    return {
        "square 2048": (2048, 2048, 2048),
        "tiny qkvo 128x128": (t_tiny, 128, 128),
        "tiny mlp 128x512": (t_tiny, 128, 512),
        "tiny lm_head 128x4096": (t_tiny, 128, 4096),
        "small qkvo 512x512": (t_small, 512, 512),
        "small mlp up 512x2816": (t_small, 512, 2816),
        "small mlp down 2816x512": (t_small, 2816, 512),
        "small lm_head 512x4096": (t_small, 512, 4096),
    }


def matmul_peak(dtype_name: str, *, repeats: int = 5, seconds: float = 0.25) -> dict:
    """GFLOP/s of `torch.mm` per shape: best of `repeats` timed bursts of ~`seconds` each, after warm-up.
    Measured on the wall clock and on this process's CPU time (the latter is the one that holds up when
    other processes share the cores, for a 1-thread run)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    wall, cpu = {}, {}
    for label, (m, k, n) in probe_shapes().items():
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        c = torch.empty(m, n, dtype=dtype)
        for _ in range(3):
            torch.mm(a, b, out=c)
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        iters = max(1, int(seconds / max(time.perf_counter() - t0, 1e-6)))
        best_wall = best_cpu = 0.0
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(iters):
                torch.mm(a, b, out=c)
            flop = 2 * m * k * n * iters / 1e9
            best_wall = max(best_wall, flop / (time.perf_counter() - t0))
            best_cpu = max(best_cpu, flop / max(time.process_time() - c0, 1e-9))
        wall[label], cpu[label] = round(best_wall, 1), round(best_cpu, 1)
    return {"per_shape_gflops": wall, "peak_gflops": max(wall.values()),
            "per_shape_gflops_cpu": cpu, "peak_gflops_cpu": max(cpu.values())}


def counted_gflop(fn) -> float:
    """GFLOP that `fn()` spends in the ops torch's FlopCounterMode counts: every matmul (mm, addmm, bmm) in forward
    and backward; the CPU flash-attention kernel is not counted (a few % of these models' work)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


# ---------------------------------------------------------------- the parent side


def probe_peak(env: dict, threads: int) -> dict:
    """fp32 matmul peak (wall and CPU-time GFLOP/s) measured in a child with the runs' environment."""
    code = (f"import json, common; common.setup_threads({threads}); p = common.matmul_peak('fp32', repeats=3); "
            "print(json.dumps([p['peak_gflops'], p['peak_gflops_cpu']]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).resolve().parent,
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    wall, cpu = json.loads(out)
    return {"wall": wall, "cpu": cpu, "threads": threads}


def child_env(threads: int, glibc_tunables: bool) -> dict[str, str]:
    """The environment of every measured child, identical for every library."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
               PYTHONHASHSEED="0", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                            os.environ.get("PYTHONPATH")])))
    if glibc_tunables:
        env["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    return env


def busy_cpu_seconds() -> float:
    """CPU seconds spent by everything on the machine since boot (all cores)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


def foreign_load(seconds: float = 1.0) -> float:
    """Cores' worth of CPU used by other processes over the next `seconds` (this process is idle)."""
    b0 = busy_cpu_seconds()
    time.sleep(seconds)
    return (busy_cpu_seconds() - b0) / seconds


def wait_idle(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (up to `max_wait` seconds) until other processes use under `threshold` cores; return the last
    load seen."""
    deadline = time.perf_counter() + max_wait
    load = foreign_load(1.0)
    while load > threshold and time.perf_counter() < deadline:
        if sys.stderr.isatty():
            sys.stderr.write(f"\r  waiting for an idle machine (other processes use {load:.2f} cores) ")
            sys.stderr.flush()
        load = foreign_load(2.0)
    if sys.stderr.isatty():
        sys.stderr.write("\r" + " " * 100 + "\r")
    return load


def run_child(argv: list[str], *, env: dict, log_path: Path, label: str, timeout: float = 1800) -> dict:
    """Run `python argv...` in a fresh process; the child writes its JSON result to the path after `--out`
    and its step count to the path after `--progress-file`. Shows a live status line on a terminal.

    Also records `foreign_cores`: CPU used meanwhile by processes other than the child (machine busy
    seconds minus the child's own, per wall second). Anything above ~0.1 means the numbers are
    contaminated by other work on the machine."""
    out_path = Path(argv[argv.index("--out") + 1])
    prog_path = Path(argv[argv.index("--progress-file") + 1])
    for p in (out_path, prog_path):
        p.unlink(missing_ok=True)
    tty = sys.stderr.isatty()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0 = busy_cpu_seconds()
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT)
        while proc.poll() is None:
            time.sleep(0.5)
            elapsed = time.perf_counter() - t0
            if elapsed > timeout:
                proc.kill()
                proc.wait()
                break
            if tty:
                step = prog_path.read_text().strip() if prog_path.exists() else ""
                sys.stderr.write(f"\r  {label}  step {step or 'starting':<9} {elapsed:6.1f}s ")
                sys.stderr.flush()
    elapsed = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    foreign = max(0.0, (busy_cpu_seconds() - busy0 - child_cpu) / max(elapsed, 1e-9))
    if tty:
        sys.stderr.write("\r" + " " * 100 + "\r")
    if proc.returncode != 0 or not out_path.exists():
        tail = log_path.read_text().splitlines()[-15:]
        return {"error": f"exit code {proc.returncode} after {elapsed:.0f}s; log {log_path}",
                "log_tail": tail, "wall_s": round(elapsed, 1), "foreign_cores": round(foreign, 2)}
    result = json.loads(out_path.read_text())
    result.update(wall_s=round(elapsed, 1), child_cpu_s=round(child_cpu, 1), foreign_cores=round(foreign, 2))
    return result


def machine_info(threads: int) -> dict:
    import torch
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = "not installed"
    cpu = platform.processor()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line for line in lines if line.startswith("model name")).split(":", 1)[1].strip()
        flags = next(line for line in lines if line.startswith("flags"))
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags]
    except (OSError, StopIteration):
        isa = []
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = float("nan")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu, "isa": isa,
            "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1), "threads": threads,
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl_version, "alignlab_commit": commit}


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


class GradClock(StepClock):
    """The step clock counting only forwards with grad enabled: the training forwards (DPO's policy, GRPO's
    update), not the reference or generation forwards."""

    def _hook(self, module, args):
        import torch

        if torch.is_grad_enabled():
            super()._hook(module, args)


def harness_args(ap, *, warmup: dict, steps: dict) -> None:
    """The options every library-vs-library harness shares (models, libraries, repeats, window, threads, clock,
    allocator tunables, waiting for a quiet machine), added to the parser `ap`."""
    ap.add_argument("--models", default="tiny", help="comma-separated: tiny,small")
    ap.add_argument("--libs", default="alignlab,trl", help="comma-separated: alignlab,trl")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per configuration (median)")
    ap.add_argument("--warmup", type=int, default=None, help=f"warm-up steps (default per model: {warmup})")
    ap.add_argument("--steps", type=int, default=None, help=f"measured steps (default per model: {steps})")
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads, same for every library")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time the window on the wall clock or on the child's CPU time (robust on a busy machine)")
    ap.add_argument("--glibc-tunables", action="store_true", help="GLIBC_TUNABLES of PERF-NOTES §2, for every library")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="before each run, wait up to this long for other processes to go quiet")
    ap.add_argument("--max-load", type=float, default=0.15, metavar="CORES", help="what --wait-idle calls quiet")
