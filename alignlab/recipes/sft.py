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
from dataclasses import dataclass, field
from typing import Literal

import torch

from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig
from alignlab.data import collate, collate_packed, make_batches, normalize, pack, read_rows, tokenize_sft
from alignlab.data.split import train_eval_split
from alignlab.errors import ConfigError
from alignlab.losses import aggregate, nll_loss
from alignlab.models import compute_logprobs, load_tokenizer, model_from_config, save_model
from alignlab.runtime import (
    FiniteGuard,
    Meter,
    Progress,
    RunDir,
    StopSignal,
    batch_rows,
    batch_tokens,
    due,
    load_checkpoint,
    make_accelerator,
    make_optimizer,
    make_scheduler,
    micro_batches,
    resume_point,
    save_step,
    seed_everything,
    to_device,
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

    def __post_init__(self):
        if self.sft.aggregate == "seq_mean_token_mean" and self.data.packing:
            raise ConfigError("sft.aggregate seq_mean_token_mean averages per row, and a packed row holds several "
                              "examples: use token_mean with data.packing")


def load_examples(cfg: SFTConfig):
    """Read, normalize and split; every row-level error surfaces here, before a model is loaded."""
    rows = read_rows(cfg.data.dataset, split=cfg.data.split, subset=cfg.data.subset, max_rows=cfg.data.max_rows)
    examples = normalize(rows, "sft", columns=cfg.data.columns or None)
    return train_eval_split(examples, cfg.data.eval_fraction, seed=cfg.seed)


def tokenize(cfg: SFTConfig, train, held, tokenizer):
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


@torch.no_grad()
def eval_loss(model, batches: list[dict], accelerator) -> float:
    """Token-mean NLL of the completion tokens of the held-out batches."""
    model.eval()
    total, count = torch.zeros((), device=accelerator.device), 0
    for batch in batches:
        with accelerator.autocast():
            lp = compute_logprobs(model, to_device(batch, accelerator.device))
        total += -lp.logprobs.sum().float()
        count += int(batch["response_mask"].sum())
    model.train()
    return total.item() / max(count, 1)


def main(cfg: SFTConfig) -> dict:
    """Train; return the last logged metrics. Writes the run directory described in docs/runs.md."""
    accelerator = make_accelerator(cfg.model.mixed_precision)
    main_process = accelerator.is_main_process
    run = RunDir(cfg.log.output_dir, tensorboard=cfg.log.tensorboard, wandb=cfg.log.wandb, enabled=main_process)
    ckpt = resume_point(run, cfg.resume)
    seed_everything(cfg.seed)
    train, held = load_examples(cfg)
    tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    train_feats, eval_feats = tokenize(cfg, train, held, tokenizer)
    run.save_config(cfg)

    model = model_from_config(cfg.model, tokenizer=tokenizer)
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    pad_id, device = tokenizer.pad_token_id, accelerator.device
    eval_batches = epoch_batches(eval_feats, cfg, 0, pad_id) if eval_feats else []

    state = {"step": 0, "epoch": 0, "batch_index": 0}
    if ckpt is not None:
        state = load_checkpoint(ckpt, model=unwrap(accelerator, model), optimizer=optimizer, scheduler=scheduler)
        run.truncate_metrics(state["step"])
    elif eval_batches:
        run.log(0, {"eval_loss": eval_loss(model, eval_batches, accelerator)})

    shard = (accelerator.process_index, accelerator.num_processes)
    batches = epoch_batches(train_feats, cfg, state["epoch"], pad_id, *shard)
    guard, meter = FiniteGuard(), Meter(device, state.get("meter"))
    progress = Progress(cfg.optim.max_steps, initial=state["step"], enabled=cfg.log.progress and main_process)
    stopping = False
    metrics: dict = {}
    model.train()

    with StopSignal() as stop:
        while state["step"] < cfg.optim.max_steps:
            # 1. next batch; a new epoch reshuffles deterministically from (seed, epoch)
            if state["batch_index"] >= len(batches):
                state["epoch"], state["batch_index"] = state["epoch"] + 1, 0
                batches = epoch_batches(train_feats, cfg, state["epoch"], pad_id, *shard)
            batch = batches[state["batch_index"]]
            step_tokens = batch["response_mask"].sum().to(device)

            # 2. forward + backward over micro-batches; every completion token of the step weighs the same
            loss = torch.zeros((), device=device)
            for micro in micro_batches(batch, cfg.optim.grad_accum):
                micro = to_device(micro, device)
                with accelerator.autocast():
                    lp = compute_logprobs(model, micro)
                token_mean = cfg.sft.aggregate == "token_mean"
                part = aggregate(nll_loss(lp.logprobs), micro["response_mask"], mode=cfg.sft.aggregate,
                                 num_tokens=step_tokens if token_mean else None)
                part = part if token_mean else part / cfg.optim.grad_accum
                accelerator.backward(part)
                loss += part.detach().float()

            # 3. clip, step, schedule
            if cfg.optim.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
            optimizer.step()
            lr = scheduler.get_last_lr()[0]  # the rate this step used
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["batch_index"] += 1
            step = state["step"]
            guard.record(step, loss, batch_rows(batch))
            meter.add({"loss": loss}, tokens=batch_tokens(batch))
            progress.update(step, tokens=batch_tokens(batch))

            # 4. log, evaluate, checkpoint: the only places that wait for the device
            stopping = stop.requested  # read once: a later signal is handled after the next step
            done = step >= cfg.optim.max_steps or stopping
            if due(step, cfg.log.log_every, done):
                guard.check()
                metrics = {"step": step, **meter.flush(), "lr": lr, "epoch": state["epoch"]}
                progress.set_loss(metrics["loss"])
            if eval_batches and due(step, cfg.log.eval_every, done):
                metrics["eval_loss"] = eval_loss(model, eval_batches, accelerator)
            if metrics.get("step") == step:
                run.log(step, metrics)
            if due(step, cfg.log.save_every, done):
                save_step(run, step, guard=guard, meter=meter, state=state, write=main_process,
                          keep=cfg.log.keep_checkpoints, model=unwrap(accelerator, model), tokenizer=tokenizer,
                          optimizer=optimizer, scheduler=scheduler)
            if stopping:
                log.info("stop requested: saved step %d, exiting", step)
                break
    progress.close()
    if main_process and not stopping:
        save_model(unwrap(accelerator, model), tokenizer, run.path)
    run.close()
    return metrics
