"""Supervised fine-tuning: maximize the likelihood of demonstrations' completion tokens.

Run:
    alignlab sft --model lab:tiny --dataset lab:sentiment-sft --output-dir runs/sft --max-steps 200
    alignlab sft --config sft.yaml --optim.lr 3e-4 --data.packing True

The loss is the token-mean NLL over completion tokens only (prompt tokens and chat-template scaffolding are
masked; in a multi-turn conversation every assistant turn counts), as in Ouyang et al. 2022 §3.5.
Departures from the paper: none in the objective; the optimizer/schedule are the usual AdamW + warm-up.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig
from alignlab.data import collate, collate_packed, make_batches, normalize, pack, read_rows, tokenize_sft
from alignlab.data.split import train_eval_split
from alignlab.losses import aggregate, nll_loss
from alignlab.models import compute_logprobs, load_tokenizer, model_from_config, save_model
from alignlab.runtime import (
    FiniteGuard,
    Progress,
    RunDir,
    StopSignal,
    latest_checkpoint,
    load_checkpoint,
    make_accelerator,
    make_optimizer,
    make_scheduler,
    save_checkpoint,
    seed_everything,
    unwrap,
)

log = logging.getLogger("alignlab")


@dataclass
class SFTOptions:
    """SFT-specific settings."""

    aggregate: Literal["token_mean", "seq_mean_token_mean"] = "token_mean"
    """How per-token NLL is reduced: over all completion tokens of a step, or per sequence first."""


@dataclass
class SFTConfig:
    """Supervised fine-tuning on prompt/completion or conversational data."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    sft: SFTOptions = field(default_factory=SFTOptions)
    seed: int = 0
    """Seed for data order, initialization of new weights, and sampling."""
    resume: bool = False
    """Continue from the newest checkpoint in the output directory."""


def prepare_data(cfg: SFTConfig, tokenizer):
    """Read, normalize, split and tokenize; every data error surfaces here, before any compute."""
    rows = read_rows(cfg.data.dataset, split=cfg.data.split, subset=cfg.data.subset, max_rows=cfg.data.max_rows)
    examples = normalize(rows, "sft", columns=cfg.data.columns or None)
    train, held = train_eval_split(examples, cfg.data.eval_fraction, seed=cfg.seed)
    kw = dict(max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length)
    train_feats, report = tokenize_sft(train, tokenizer, **kw)
    log.info("train data: %s", report.summary())
    eval_feats = tokenize_sft(held, tokenizer, **kw)[0] if held else []
    return train_feats, eval_feats


def epoch_batches(features, cfg: SFTConfig, epoch: int, pad_id: int, rank: int = 0, world: int = 1) -> list[dict]:
    """This process's batches for the epoch, deterministic from (seed, epoch): packed rows or length-grouped
    padded rows; with several processes each takes every `world`-th batch."""
    if cfg.data.packing:
        bins = pack(features, cfg.data.max_length)
        lengths = [sum(len(features[i]["input_ids"]) for i in b) for b in bins]
        order = make_batches(lengths, batch_size=cfg.optim.batch_size, seed=cfg.seed, epoch=epoch)
        return [collate_packed(features, [bins[i] for i in idx], pad_id) for idx in order[rank::world]]
    lengths = [len(f["input_ids"]) for f in features]
    order = make_batches(lengths, batch_size=cfg.optim.batch_size, seed=cfg.seed, epoch=epoch)
    return [collate([features[i] for i in idx], pad_id) for idx in order[rank::world]]


def batch_rows(batch: dict) -> list[int]:
    if "packed_row_ids" in batch:
        return [r for rows in batch["packed_row_ids"] for r in rows]
    return batch["row_ids"].tolist()


def micro_batches(batch: dict, n: int) -> list[dict]:
    """Split a batch into n micro-batches along dim 0 (tensors only; bookkeeping stays on the full batch)."""
    if n == 1:
        return [batch]
    keys = [k for k, v in batch.items() if torch.is_tensor(v) and v.dim() >= 1 and k != "row_ids"]
    chunks = {k: batch[k].tensor_split(n) for k in keys}
    return [{k: chunks[k][i] for k in keys} for i in range(n) if chunks[keys[0]][i].shape[0] > 0]


@torch.no_grad()
def eval_loss(model, batches: list[dict], accelerator) -> float:
    """Token-mean NLL of the completion tokens of the held-out batches."""
    model.eval()
    total, count = torch.zeros(()), torch.zeros(())
    for batch in batches:
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with accelerator.autocast():
            lp = compute_logprobs(model, batch)
        total += -lp.logprobs.sum().float().cpu()
        count += batch["response_mask"].sum().cpu()
    model.train()
    return (total / count.clamp(min=1)).item()


def main(cfg: SFTConfig) -> dict:
    """Train; return the last logged metrics. Writes the run directory described in docs/runs.md."""
    run = RunDir(cfg.log.output_dir)
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    train_feats, eval_feats = prepare_data(cfg, tokenizer)
    run.save_config(cfg)

    accelerator = make_accelerator(cfg.model.mixed_precision)
    model = model_from_config(cfg.model, tokenizer=tokenizer)
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    pad_id = tokenizer.pad_token_id
    eval_batches = epoch_batches(eval_feats, cfg, 0, pad_id) if eval_feats else []

    state = {"step": 0, "epoch": 0, "batch_index": 0}
    ckpt = latest_checkpoint(run.path) if cfg.resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model=unwrap(accelerator, model), optimizer=optimizer, scheduler=scheduler)
        run.truncate_metrics(state["step"])

    shard = (accelerator.process_index, accelerator.num_processes)
    batches = epoch_batches(train_feats, cfg, state["epoch"], pad_id, *shard)
    if eval_batches and state["step"] == 0:
        run.log(0, {"eval_loss": eval_loss(model, eval_batches, accelerator)})
    guard = FiniteGuard()
    progress = Progress(cfg.optim.max_steps, initial=state["step"], enabled=cfg.log.progress)
    loss_sum = torch.tensor(state.get("loss_sum", 0.0), device=accelerator.device)
    tok_sum, last = 0, {}
    interval_start = time.perf_counter()
    model.train()

    def checkpoint():
        guard.check()  # never write a checkpoint after a non-finite step
        state["loss_sum"] = loss_sum.item()  # the open logging interval, so a resumed run logs the same mean
        save_checkpoint(run, state["step"], model=unwrap(accelerator, model), tokenizer=tokenizer,
                        optimizer=optimizer, scheduler=scheduler, state=state, keep=cfg.log.keep_checkpoints)

    with StopSignal() as stop:
        while state["step"] < cfg.optim.max_steps:
            # 1. next batch; a new epoch reshuffles deterministically from (seed, epoch)
            if state["batch_index"] >= len(batches):
                state["epoch"], state["batch_index"] = state["epoch"] + 1, 0
                batches = epoch_batches(train_feats, cfg, state["epoch"], pad_id, *shard)
            batch = batches[state["batch_index"]]
            step_tokens = batch["response_mask"].sum().to(accelerator.device)

            # 2. forward + backward over micro-batches; every completion token of the step weighs the same
            for micro in micro_batches(batch, cfg.optim.grad_accum):
                micro = {k: v.to(accelerator.device) for k, v in micro.items() if torch.is_tensor(v)}
                with accelerator.autocast():
                    lp = compute_logprobs(model, micro)
                loss = aggregate(nll_loss(lp.logprobs), micro["response_mask"], mode=cfg.sft.aggregate,
                                 num_tokens=step_tokens if cfg.sft.aggregate == "token_mean" else None)
                if cfg.sft.aggregate != "token_mean":
                    loss = loss / cfg.optim.grad_accum
                accelerator.backward(loss)
                loss_sum += loss.detach().float()

            # 3. clip, step, schedule
            if cfg.optim.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["batch_index"] += 1
            guard.record(state["step"], loss.detach(), batch_rows(batch))
            tokens = int(batch["input_ids"].numel())
            tok_sum += tokens
            progress.update(state["step"], tokens=tokens)

            # 4. log, evaluate, checkpoint (the only places that wait for the device)
            step = state["step"]
            done = step >= cfg.optim.max_steps or stop.requested
            if step % max(cfg.log.log_every, 1) == 0 or done:
                guard.check()
                n = step - state.get("logged_step", 0)
                elapsed = time.perf_counter() - interval_start
                last = {"step": step, "loss": (loss_sum / max(n, 1)).item(), "lr": scheduler.get_last_lr()[0],
                        "epoch": state["epoch"], "tokens_per_s": tok_sum / max(elapsed, 1e-9)}
                loss_sum.zero_()
                tok_sum, interval_start = 0, time.perf_counter()
                state["logged_step"] = step
                progress.set_loss(last["loss"])
            if eval_batches and ((cfg.log.eval_every and step % cfg.log.eval_every == 0) or done):
                last["eval_loss"] = eval_loss(model, eval_batches, accelerator)
            if last.get("step") == step:
                run.log(step, last)
            if (cfg.log.save_every and step % cfg.log.save_every == 0) or done:
                checkpoint()
            if stop.requested:
                log.info("stop requested: saved step %d, exiting", step)
                break
    progress.close()
    if not stop.requested:
        guard.check()
        save_model(unwrap(accelerator, model), tokenizer, run.path)
    run.close()
    return last
