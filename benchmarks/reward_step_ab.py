"""One reward-model optimizer step on the SAME pairs, TRL's `RewardTrainer` against alignlab's `rm` step, interleaved
in one process: the per-step ratio, robust on a machine shared with other work.

Run (from the repository root):
    python benchmarks/reward_step_ab.py                               # tiny, 8 pairs per batch
    python benchmarks/reward_step_ab.py --models small --rounds 3 --batches 2
    python benchmarks/reward_step_ab.py --variants alignlab,alignlab-unshared
    python benchmarks/reward_step_ab.py --models small --precision bf16   # bf16 autocast on both sides

A diagnostic next to benchmarks/reward.py, not a replacement (the same method as benchmarks/dpo_step_ab.py):
every round runs each variant on `--batches` random batches (no length grouping) and times the steps on this
process's CPU clock with one thread; the per-round ratio TRL / variant is reported as its median over rounds.
- TRL: `trainer.training_step` (forward over 2B rows, loss, metrics, backward) + `clip_grad_norm_` + its optimizer
  step, on its own tokenization and collation of the pairs.
- alignlab: the `rm` recipe's step 4-5 for `bradley_terry` (collate, forward + loss `recipes.reward._bt`, backward,
  `step_stats`) + `clip_grad_norm_` + the recipe's optimizer step, on alignlab's tokenization of the same rows, in
  shared-prompt rows (`alignlab`, the default) or 2B separate rows (`alignlab-unshared`).
After the timed rounds each variant runs one more round under torch's FlopCounterMode (`gflop_per_round`: its
matmul work; `gflop_per_cpu_s`: that over its median round time).
Writes benchmarks/results/reward_step_ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common
from reward import LR, MAX_LENGTH, pair_dataset

sys.path.insert(0, str(common.ROOT))  # alignlab from this checkout

BATCH = {"tiny": 8, "small": 4}
VARIANTS = ("trl", "alignlab", "alignlab-unshared")


def trl_side(path: Path, rows: list[dict], batch_size: int, precision: str = "fp32"):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(output_dir=tempfile.mkdtemp(prefix="bench-rm-ab-"), max_steps=10**6,
                        per_device_train_batch_size=batch_size, learning_rate=LR, lr_scheduler_type="constant",
                        weight_decay=0.0, max_grad_norm=1.0, bf16=precision == "bf16", fp16=False,
                        gradient_checkpointing=False, activation_checkpointing=False, max_length=MAX_LENGTH,
                        report_to=[], save_strategy="no", logging_steps=10**6, disable_tqdm=True, use_cpu=True, seed=0)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    trainer.current_gradient_accumulation_steps = 1
    if precision == "bf16":  # as trainer.train() does: accelerate wraps the model's forward in autocast
        model = trainer.accelerator.prepare_model(model)
    model.train()
    dataset = trainer.train_dataset

    def step(idx: list[int]) -> None:
        trainer.training_step(model, trainer.data_collator([dataset[i] for i in idx]))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    return len(dataset), step


def alignlab_side(path: Path, data: Path, batch_size: int, shared: bool, precision: str = "fp32"):
    import torch

    from alignlab.config import DataConfig, ModelConfig, OptimConfig
    from alignlab.data import normalize, read_rows, tokenize_preference
    from alignlab.models import load_tokenizer
    from alignlab.recipes import reward
    from alignlab.recipes.reward_data import PIPELINES, step_stats
    from alignlab.runtime import make_optimizer

    cfg = reward.RewardConfig(
        model=ModelConfig(path=str(path), dtype="float32", gradient_checkpointing=False),
        data=DataConfig(dataset=str(data), max_length=MAX_LENGTH, eval_fraction=0.0),
        optim=OptimConfig(lr=LR, scheduler="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                          batch_size=batch_size, max_steps=10**6),
        rm=reward.RewardOptions(normalize_on="none", share_prompt=shared))
    tokenizer = load_tokenizer(str(path))
    feats, _ = tokenize_preference(normalize(read_rows(str(data)), "preference"), tokenizer, max_length=MAX_LENGTH)
    for f in feats:
        f["margin"] = None
    model = reward.build_model(cfg, tokenizer, [])
    collate = PIPELINES["shared_pairs" if shared else "pairs"].collate
    optimizer = make_optimizer(model, cfg.optim)
    model.train()

    def step(idx: list[int]) -> None:
        micro = collate([feats[i] for i in idx], tokenizer.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):  # the recipe's autocast
            losses, correct, margins, scores = reward._bt(model, micro, cfg)
        loss = losses.sum() / len(idx)
        loss.backward()
        step_stats(loss.detach(), [correct], [margins.detach()], [scores.detach()])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return len(feats), step


def measure(name: str, variants: list[str], rounds: int, n_batches: int, precision: str = "fp32") -> dict:
    path, batch_size = common.model_dir(name), BATCH[name]
    data = pair_dataset(1024)
    rows = [json.loads(line) for line in data.open()]
    steps, sizes = {}, set()
    for v in variants:
        n, steps[v] = (trl_side(path, rows, batch_size, precision) if v == "trl" else
                       alignlab_side(path, data, batch_size, shared=v == "alignlab", precision=precision))
        sizes.add(n)
    if len(sizes) != 1:
        raise RuntimeError(f"the libraries kept different numbers of pairs: {sizes}")
    rng = random.Random(0)
    n_pairs = sizes.pop()
    batches = [rng.sample(range(n_pairs), batch_size) for _ in range(n_batches)]
    for v in steps:  # warm-up
        steps[v](batches[0])
    times = {v: [] for v in steps}
    for k in range(rounds):
        for v, step in steps.items():
            c0 = time.process_time()
            for idx in batches:
                step(idx)
            times[v].append(time.process_time() - c0)
        print(f"  {name} round {k + 1}/{rounds}: " + "  ".join(f"{v} {t[-1]:.2f}s" for v, t in times.items()),
              flush=True)
    out = {"model": name, "precision": precision, "pairs_per_batch": batch_size, "batches": n_batches,
           "rounds": rounds, "cpu_s": times,
           "speedup_vs_trl": {}, "gflop_per_round": {}, "gflop_per_cpu_s": {}}
    for v, step in steps.items():  # one more round, untimed, under the FLOP counter: the work each side does
        out["gflop_per_round"][v] = common.counted_gflop(lambda step=step: [step(idx) for idx in batches])
        out["gflop_per_cpu_s"][v] = out["gflop_per_round"][v] / statistics.median(times[v])
    for v, t in times.items():
        if v != "trl" and "trl" in times:
            ratios = [a / b for a, b in zip(times["trl"], t)]
            out["speedup_vs_trl"][v] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny", help="comma-separated: tiny,small")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {','.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batches", type=int, default=3, help="distinct random batches per round")
    ap.add_argument("--precision", choices=common.PRECISIONS, default="fp32",
                    help="fp32, or bf16 autocast on both sides (default output: results/reward_step_ab-bf16.json)")
    ap.add_argument("--out", default=None, help="default: results/reward_step_ab.json (-bf16 with --precision bf16)")
    a = ap.parse_args()
    common.setup_threads(1)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    load_before = os.getloadavg()[0]
    results = []
    for name in a.models.split(","):
        r = measure(name, a.variants.split(","), a.rounds, a.batches, a.precision)
        results.append(r)
        for key, s in r["speedup_vs_trl"].items():
            print(f"{name:5s} {key:20s} {s['median']:.2f}x TRL (rounds: {s['min']:.2f}-{s['max']:.2f})", flush=True)
        for key, g in r["gflop_per_round"].items():
            print(f"{name:5s} {key:20s} {g:7.1f} GFLOP/round  {r['gflop_per_cpu_s'][key]:6.1f} GFLOP per CPU s",
                  flush=True)
    out = a.out or common.RESULTS / f"{common.results_stem('reward_step_ab', a.precision)}.json"
    Path(out).write_text(json.dumps({"machine": common.machine_info(1), "loadavg": [load_before,
                                                                                      os.getloadavg()[0]],
                                       "results": results}, indent=1))


if __name__ == "__main__":
    main()
