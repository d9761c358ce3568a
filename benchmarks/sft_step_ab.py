"""One SFT optimizer step on the SAME batch, TRL against alignlab, interleaved in one process: min of N.

Run (from the repository root):
    python benchmarks/sft_step_ab.py                       # tiny and small, fp32 and bf16, 8 rounds each
    python benchmarks/sft_step_ab.py --models small --precisions bf16 --rounds 12

A diagnostic next to benchmarks/sft.py, not a replacement: it isolates the per-step implementation (forward,
log-probs, loss, backward, clipping, AdamW) from data order and padding, and it holds up on a machine shared
with other work, because both sides alternate in one process with one thread and the minimum CPU time of
each is kept. TRL: `SFTTrainer.training_step` + `clip_grad_norm_` + its optimizer step, on a batch from its
own dataloader. alignlab: `compute_logprobs` + `nll_loss` + `aggregate` + backward + `clip_grad_norm_` + fused
AdamW on the same tokens (response_mask = TRL's labels != -100); recipe bookkeeping is left out on both
sides. Writes benchmarks/results/sft_step_ab.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import common

BATCH = {"tiny": 16, "small": 8}


def measure(name: str, precision: str, rounds: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from alignlab.losses import aggregate, nll_loss
    from alignlab.models import compute_logprobs

    path = common.model_dir(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = [json.loads(line) for line in common.sft_dataset(1024).open()]
    trl_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    al_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    args = SFTConfig(output_dir=tempfile.mkdtemp(prefix="bench-ab-"), max_steps=rounds,
                     per_device_train_batch_size=BATCH[name], learning_rate=1e-4, bf16=precision == "bf16",
                     gradient_checkpointing=False, activation_checkpointing=False, completion_only_loss=True,
                     packing=False, max_length=256, report_to=[], save_strategy="no", logging_steps=10**6,
                     disable_tqdm=True, use_cpu=True, seed=0)
    trainer = SFTTrainer(model=trl_model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    trainer.create_optimizer_and_scheduler(num_training_steps=rounds)
    trainer.current_gradient_accumulation_steps = 1
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"]
    # alignlab's mask is aligned with input_ids (token t counts); TRL's labels are too (shifted inside the loss)
    al_batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "response_mask": labels != -100}
    optimizer = torch.optim.AdamW(al_model.parameters(), lr=1e-4, fused=True)
    trl_model.train()
    al_model.train()

    def trl_step():
        trainer.training_step(trl_model, dict(batch))
        torch.nn.utils.clip_grad_norm_(trl_model.parameters(), 1.0)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    def alignlab_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            lp = compute_logprobs(al_model, al_batch)
        loss = aggregate(nll_loss(lp.logprobs), al_batch["response_mask"], mode="token_mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(al_model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"trl": [], "alignlab": []}
    for _ in range(rounds):
        for lib, step in (("trl", trl_step), ("alignlab", alignlab_step)):
            c0 = time.process_time()
            step()
            times[lib].append(time.process_time() - c0)
    tokens = int(batch["attention_mask"].sum())
    out = {"model": name, "precision": precision, "batch_shape": list(batch["input_ids"].shape),
           "tokens": tokens, "cpu_s_per_step": times}
    for lib in times:
        out[f"{lib}_min_s"] = min(times[lib])
        out[f"{lib}_tokens_per_cpu_s"] = tokens / min(times[lib])
    out["speedup"] = out["trl_min_s"] / out["alignlab_min_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--rounds", type=int, default=8, help="steps of each library, alternating")
    a = ap.parse_args()
    common.setup_threads(1)
    results = []
    for name in a.models.split(","):
        for precision in a.precisions.split(","):
            r = measure(name, precision, a.rounds)
            results.append(r)
            print(f"{name:5s} {precision}  batch {r['batch_shape']} ({r['tokens']} tokens)  "
                  f"TRL {r['trl_min_s']:.3f} s  alignlab {r['alignlab_min_s']:.3f} s  "
                  f"-> alignlab {r['speedup']:.2f}x", flush=True)
    out = Path(__file__).resolve().parent / "results" / "sft_step_ab.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": common.machine_info(1), "rounds": a.rounds, "results": results},
                              indent=1))


if __name__ == "__main__":
    main()
