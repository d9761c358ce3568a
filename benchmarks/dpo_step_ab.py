"""One DPO optimizer step on the SAME pairs, TRL's `DPOTrainer` against alignlab's preference step, interleaved in
one process: the per-step ratio, robust on a machine shared with other work.

Run (from the repository root):
    python benchmarks/dpo_step_ab.py                                  # tiny, live + precomputed reference
    python benchmarks/dpo_step_ab.py --models small --rounds 3 --batches 2
    python benchmarks/dpo_step_ab.py --variants alignlab,alignlab-unshared    # only alignlab's two layouts
    python benchmarks/dpo_step_ab.py --models small --precision bf16   # bf16 autocast on both sides

A diagnostic next to benchmarks/dpo.py, not a replacement. Each round runs every variant on each of `--batches`
batches of 8 pairs (tiny; 4 for small), drawn at random (no length grouping, so alignlab's grouping gets no
credit here), and times each step on this process's CPU clock with one thread; the ratio of TRL's round time to a
variant's is taken per round (both saw the same load then) and the median over rounds is reported.
- TRL: `trainer.training_step` (policy forward + reference forward or precomputed values + loss + backward,
  its metrics included) + `clip_grad_norm_` + its optimizer step, on its own collation of the pairs.
- alignlab: `recipes.preference.step_terms` (the recipe's step: forward(s), loss, backward, metrics) +
  `clip_grad_norm_` + the recipe's optimizer step, on `collate_features` of the same tokenized pairs (TRL's
  prompt/chosen/rejected ids), with a frozen-copy reference ("live") or a table ("precomputed"), in shared-prompt
  rows (`alignlab`) or 2B separate rows (`alignlab-unshared`).
After the timed rounds each variant runs one more round under torch's FlopCounterMode: `gflop_per_round` is the
matmul work it does (forward + backward), `gflop_per_cpu_s` that over its median round time (its achieved rate;
one thread of this machine peaks near 156 GFLOP/s fp32).
Writes benchmarks/results/dpo_step_ab.json.
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
from dpo import BETA, LR, MAX_LENGTH, pairs_dataset

sys.path.insert(0, str(common.ROOT))  # alignlab from this checkout

BATCH = {"tiny": 8, "small": 4}
VARIANTS = ("trl", "alignlab", "alignlab-unshared")


def trl_side(path: Path, rows: list[dict], batch_size: int, precision: str = "fp32"):
    """A DPOTrainer with a live reference, its tokenized dataset, and a step function per reference mode."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    args = DPOConfig(output_dir=tempfile.mkdtemp(prefix="bench-dpo-ab-"), max_steps=10**6,
                     per_device_train_batch_size=batch_size, learning_rate=LR, lr_scheduler_type="constant",
                     weight_decay=0.0, max_grad_norm=1.0, beta=BETA, loss_type=["sigmoid"],
                     precompute_ref_log_probs=False, max_length=MAX_LENGTH, bf16=precision == "bf16", fp16=False,
                     gradient_checkpointing=False, activation_checkpointing=False, report_to=[], save_strategy="no",
                     logging_steps=10**6, disable_tqdm=True, use_cpu=True, seed=0)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    trainer.current_gradient_accumulation_steps = 1
    if precision == "bf16":  # as trainer.train() does: accelerate wraps the model's forward in autocast
        model = trainer.accelerator.prepare_model(model)
    model.train()

    def step(examples: list[dict], ref: str) -> None:
        trainer.precompute_ref_logps = ref == "precomputed"  # then the loss reads ref_*_logps from the batch
        batch = trainer.data_collator([{**e, "ref_chosen_logps": -100.0, "ref_rejected_logps": -100.0}
                                       if ref == "precomputed" else e for e in examples])
        trainer.training_step(model, batch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    return trainer.train_dataset, step


def alignlab_side(path: Path, n_features: int, batch_size: int, shared: bool, precision: str = "fp32"):
    """The recipe's pieces (model, frozen-copy or precomputed reference, optimizer) and a step function."""
    import torch

    from alignlab.config import DataConfig, ModelConfig, OptimConfig
    from alignlab.models import load_tokenizer, model_from_config
    from alignlab.models.reference import LiveReference, PrecomputedReference, frozen_copy
    from alignlab.recipes import preference
    from alignlab.recipes.preference_data import collate_features
    from alignlab.runtime import make_accelerator, make_optimizer

    cfg = preference.PreferenceConfig(
        model=ModelConfig(path=str(path), dtype="float32", gradient_checkpointing=False,
                          mixed_precision="bf16" if precision == "bf16" else "no"),
        data=DataConfig(dataset="unused.jsonl", max_length=MAX_LENGTH),
        optim=OptimConfig(lr=LR, scheduler="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                          batch_size=batch_size, max_steps=10**6),
        pref=preference.PreferenceOptions(loss="dpo", beta=BETA, reference="copy", share_prompt=shared))
    tokenizer = load_tokenizer(str(path))
    model = model_from_config(cfg.model, tokenizer=tokenizer)
    refs = {"live": LiveReference(frozen_copy(model)),
            "precomputed": PrecomputedReference(torch.full((n_features, 2), -100.0))}
    accelerator = make_accelerator(cfg.model.mixed_precision)
    optimizer = make_optimizer(model, cfg.optim)
    extra = {"bco": torch.zeros(2)}
    model.train()

    def step(examples: list[dict], ref: str) -> None:
        micro = collate_features(examples, tokenizer.pad_token_id, shared)
        preference.step_terms(model, refs[ref], [micro], cfg, accelerator, extra, backward=True)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(name: str, refs: list[str], variants: list[str], rounds: int, n_batches: int,
            precision: str = "fp32") -> dict:
    path, batch_size = common.model_dir(name), BATCH[name]
    rows = [json.loads(line) for line in pairs_dataset().open()]
    dataset, trl_step = trl_side(path, rows, batch_size, precision)
    feats = [{"prompt_ids": e["prompt_ids"], "chosen_ids": e["chosen_ids"], "rejected_ids": e["rejected_ids"],
              "row": i, "index": i} for i, e in enumerate(dataset)]
    steps = {"trl": trl_step}
    for v in variants:
        if v != "trl":
            steps[v] = alignlab_side(path, len(feats), batch_size, shared=v == "alignlab", precision=precision)
    rng = random.Random(0)
    batches = [rng.sample(range(len(feats)), batch_size) for _ in range(n_batches)]
    times = {(v, r): [] for v in steps for r in refs}  # per round: CPU s over the round's batches
    for idx in batches[:1]:  # warm-up: one step of each
        for (v, r) in times:
            steps[v]([dataset[i] if v == "trl" else feats[i] for i in idx], r)
    for k in range(rounds):
        for (v, r) in times:
            c0 = time.process_time()
            for idx in batches:
                steps[v]([dataset[i] if v == "trl" else feats[i] for i in idx], r)
            times[(v, r)].append(time.process_time() - c0)
        print(f"  {name} round {k + 1}/{rounds}: " + "  ".join(f"{v}/{r} {t[-1]:.2f}s" for (v, r), t in times.items()),
              flush=True)
    out = {"model": name, "precision": precision, "pairs_per_batch": batch_size, "batches": n_batches,
           "rounds": rounds, "cpu_s": {f"{v}/{r}": t for (v, r), t in times.items()}, "speedup_vs_trl": {},
           "gflop_per_round": {}, "gflop_per_cpu_s": {}}
    for (v, r), t in times.items():  # one more round, untimed, under the FLOP counter: the work each side does
        gflop = common.counted_gflop(lambda v=v, r=r: [steps[v]([dataset[i] if v == "trl" else feats[i]
                                                                 for i in idx], r) for idx in batches])
        out["gflop_per_round"][f"{v}/{r}"] = gflop
        out["gflop_per_cpu_s"][f"{v}/{r}"] = gflop / statistics.median(t)
    for (v, r), t in times.items():
        if v != "trl" and ("trl", r) in times:
            ratios = [a / b for a, b in zip(times[("trl", r)], t)]
            out["speedup_vs_trl"][f"{v}/{r}"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                 "max": max(ratios)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny", help="comma-separated: tiny,small")
    ap.add_argument("--refs", default="live,precomputed")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {','.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batches", type=int, default=3, help="distinct random batches per round")
    ap.add_argument("--precision", choices=common.PRECISIONS, default="fp32",
                    help="fp32, or bf16 autocast on both sides (default output: results/dpo_step_ab-bf16.json)")
    ap.add_argument("--out", default=None, help="default: results/dpo_step_ab.json (-bf16 with --precision bf16)")
    a = ap.parse_args()
    common.setup_threads(1)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    load_before = os.getloadavg()[0]
    results = []
    for name in a.models.split(","):
        r = measure(name, a.refs.split(","), a.variants.split(","), a.rounds, a.batches, a.precision)
        results.append(r)
        for key, s in r["speedup_vs_trl"].items():
            print(f"{name:5s} {key:32s} {s['median']:.2f}x TRL (rounds: {s['min']:.2f}-{s['max']:.2f})", flush=True)
        for key, g in r["gflop_per_round"].items():
            print(f"{name:5s} {key:32s} {g:7.1f} GFLOP/round  {r['gflop_per_cpu_s'][key]:6.1f} GFLOP per CPU s",
                  flush=True)
    out = a.out or common.RESULTS / f"{common.results_stem('dpo_step_ab', a.precision)}.json"
    Path(out).write_text(json.dumps({"machine": common.machine_info(1), "loadavg": [load_before,
                                                                                      os.getloadavg()[0]],
                                       "results": results}, indent=1))


if __name__ == "__main__":
    main()
