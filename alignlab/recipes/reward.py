"""Reward modeling: learn a scalar r(x, y) from comparisons, rankings, labels, ratings or step labels.

Run:
    alignlab rm --model lab:tiny --dataset prefs.jsonl --output-dir runs/rm --max-steps 300
    alignlab rm --dataset prefs.jsonl --rm.ensemble-size 3 --rm.ensemble-mode mean_minus_std
    alignlab rm --dataset ranked.jsonl --rm.objective kwise
    alignlab rm --dataset helpsteer.jsonl --rm.objective attributes --output-dir runs/attr
    alignlab rm --model runs/attr --dataset prefs.jsonl --rm.objective gating --output-dir runs/gated
    alignlab rm --dataset steps.jsonl --rm.objective process
    alignlab eval rm --model runs/rm --dataset heldout.jsonl

Objectives (each a function of `alignlab.losses.reward`; docs/reward.md has papers and equations):
bradley_terry (pairs; Ouyang 2022 eq. 1, Llama 2 margin, label smoothing, Eisenstein 2023 centering),
kwise (ranked lists: a prompt's K completions scored once, all C(K,2) comparisons one example),
binary (unpaired good/bad labels), imitation (LM NLL on chosen; its "reward" is the mean completion
log-prob), attributes (HelpSteer2-style ratings, one head per attribute), gating (ArmoRM stage 2: frozen
attribute RM, a GatingNetwork trained with a Bradley-Terry loss on the gated score), process (PRM: one
correct/incorrect label per step, TRL's stepwise-supervision rows {"prompt", "completions", "labels"}).

The run directory holds the final model (loadable by plain transformers), its normalization gain/bias
computed on `rm.normalize_on`, and `eval.json` (accuracy, ECE, per-category, ensemble agreement, ...).
bradley_terry also takes GRM's text-generation regularizer (`--rm.lm-coef`, Yang 2024; recipes/reward_terms.py):
the base LM's head over the RM's hidden states, + coef * -log sigmoid(beta log pi(y_c|x)) (or `nll`, `dpo`).

Departures from the papers: ensemble members share the backbone (N heads, Coste 2023 style) and see the
same batches (Christiano 2017 trains separate bootstrapped networks); GRM's regularizer is added as
L_BT + coef * L_reg (not (1 - a) L_BT + a L_reg), an untied LM head stays frozen, and its DPO form has no
reference model; process labels are read at the last token of each step.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from typing import Literal

import torch

from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig
from alignlab.errors import ConfigError
from alignlab.losses.reward import (
    attribute_regression_loss,
    binary_discrimination_loss,
    bradley_terry_loss,
    gated_bt_loss,
    gated_scores,
    kwise_ranking_loss,
    process_reward_loss,
    reward_centering_loss,
)
from alignlab.models import (
    compute_logprobs,
    load_tokenizer,
    model_from_config,
    save_model,
)
from alignlab.models.reward import (
    GatingNetwork,
    apply_reward_lora,
    compute_normalization,
    load_lm_head,
    load_process_reward_model,
    load_reward_model,
    prompt_hidden_states,
    reward_scores,
    save_reward_model,
    step_scores,
)
from alignlab.recipes.reward_data import (
    PIPELINES,
    chunks,
    epoch_batches,
    prepare,
    shared_prompt_scores,
    shares_prompt,
    step_stats,
)
from alignlab.recipes.reward_eval import final_eval, prompt_view, score_rows, scorer
from alignlab.recipes.reward_terms import lm_regularizer, scores_and_hidden
from alignlab.rewards.ensemble import combine
from alignlab.runtime import (
    FiniteGuard,
    Meter,
    Progress,
    RunDir,
    StopSignal,
    due,
    load_checkpoint,
    make_accelerator,
    make_optimizer,
    make_scheduler,
    resume_point,
    save_step,
    seed_everything,
    to_device,
    unwrap,
)

log = logging.getLogger("alignlab")


@dataclass
class RewardOptions:
    """Reward-model settings."""

    objective: Literal["bradley_terry", "kwise", "binary", "imitation", "attributes", "gating",
                       "process"] = "bradley_terry"
    """Training objective (and the data it reads): see the module docstring."""
    margin_column: str | None = None
    """Llama 2 margin m in -log sigmoid(r_c - r_r - m): `margin` (the row's margin), `score` (score_chosen -
    score_rejected), or any other numeric column. Default: no margin."""
    label_smoothing: float = 0.0
    """Bradley-Terry label smoothing eps (the label is wrong with probability eps), in [0, 0.5)."""
    center_coef: float = 0.0
    """Eisenstein et al. 2023 reward centering: + coef * (r_c + r_r)^2 keeps scores near zero."""
    ensemble_size: int = 1
    """Reward heads on the shared backbone (bradley_terry/binary); their spread is the disagreement."""
    ensemble_mode: Literal["mean", "min", "mean_minus_std"] = "mean"
    """How the heads are combined for accuracy and evaluation (Coste 2023)."""
    lam: float = 1.0
    """Weight of the std in `mean_minus_std`."""
    normalize_on: str = "eval"
    """Reference set for the stored gain/bias (scores -> mean 0, std 1): `eval`, `train`, a file, or `none`."""
    category_column: str | None = None
    """Column of the eval rows naming each pair's category: eval.json gets per-category accuracy."""
    attributes: list[str] = field(default_factory=list)
    """Attribute columns for `attributes` (default: every HelpSteer attribute the data rates)."""
    gating_beta: float = 1.0
    """beta of the gated Bradley-Terry loss (stage 2 of `gating`)."""
    step_separator: str = "\n"
    """Text appended to each step of `process` rows; the step's label is read at its last token."""
    eval_batch_size: int = 32
    """Sequences per forward when scoring for evaluation and normalization."""
    lm_coef: float = 0.0
    """bradley_terry: weight of GRM's text-generation regularizer (Yang 2024) on the RM's hidden states; 0 = off."""
    lm_loss: Literal["sft", "nll", "dpo"] = "sft"
    """GRM regularizer: -log sigmoid(beta log pi(y_c|x)) (`sft`), token-mean NLL of y_c, or reference-free DPO."""
    lm_beta: float = 0.1
    """beta of the `sft` and `dpo` regularizers."""
    share_prompt: bool = True
    """bradley_terry: hold each pair's prompt once (prompt + chosen + rejected in one row, 4D attention mask);
    same scores as separate rows, fewer FLOPs. Off for models without a `score` head or whose attention takes
    no custom mask (FlashAttention)."""

    def __post_init__(self):
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"rm.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if min(self.center_coef, self.lam, self.lm_coef) < 0 or self.gating_beta <= 0 or self.lm_beta <= 0:
            raise ConfigError("rm.center_coef, rm.lam and rm.lm_coef must be >= 0; rm.gating_beta, rm.lm_beta > 0")
        if self.ensemble_size < 1:
            raise ConfigError(f"rm.ensemble_size must be >= 1, got {self.ensemble_size}")
        if self.ensemble_size > 1 and self.objective not in ("bradley_terry", "binary"):
            raise ConfigError("rm.ensemble_size > 1 needs rm.objective bradley_terry or binary")
        pair_only = {"margin_column": self.margin_column, "label_smoothing": self.label_smoothing,
                     "center_coef": self.center_coef, "lm_coef": self.lm_coef}
        for name, value in pair_only.items():
            if value and self.objective != "bradley_terry":
                raise ConfigError(f"rm.{name} applies to rm.objective bradley_terry only")


@dataclass
class RewardConfig:
    """Train a reward model (or a preference-model baseline) on comparisons, labels or ratings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset=""))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, scheduler="linear"))
    log: LogConfig = field(default_factory=LogConfig)
    rm: RewardOptions = field(default_factory=RewardOptions)
    seed: int = 0
    """Seed for data order, the new heads' initialization and the split."""
    resume: bool = False
    """Continue from the newest checkpoint in the output directory."""

    def __post_init__(self):
        if self.model.lora_r > 0 and self.rm.objective == "gating":
            raise ConfigError("rm.objective gating trains only the gate (the reward model is frozen): "
                              "set model.lora_r 0")


# data preparation lives in recipes/reward_data.py

# ---------------------------------------------------------------- forward + loss per objective
# Each returns (losses per unit, correct per unit or None, margins or None, scores) for one batch.


def _bt(model, batch, cfg, lm_head=None):
    shared, hidden = "segments" in batch, None
    if lm_head is not None:  # GRM: the same forward's hidden states feed the LM head
        scores, hidden = scores_and_hidden(model, batch)
    else:
        scores = shared_prompt_scores(model, batch) if shared else reward_scores(model, batch)  # (2B, N)
    n = scores.shape[0] // 2
    chosen, rejected = scores[:n], scores[n:]
    margin = batch.get("margin")
    margin = margin[:, None].expand_as(chosen).reshape(-1) if margin is not None else None
    losses, _ = bradley_terry_loss(chosen.reshape(-1), rejected.reshape(-1), margin=margin,
                                   label_smoothing=cfg.rm.label_smoothing)
    losses = losses.view(n, -1).mean(1)  # every head learns from every pair
    if cfg.rm.center_coef:
        losses = losses + reward_centering_loss(chosen, rejected, coef=cfg.rm.center_coef).mean(1)
    if hidden is not None:
        losses = losses + cfg.rm.lm_coef * lm_regularizer(model, lm_head, hidden, batch, kind=cfg.rm.lm_loss,
                                                          beta=cfg.rm.lm_beta)
    c, r = _combined(chosen, cfg), _combined(rejected, cfg)
    return losses, c > r, c - r, scores


def _combined(scores, cfg):
    return combine(scores, mode=cfg.rm.ensemble_mode, lam=cfg.rm.lam) if scores.shape[1] > 1 else scores[:, 0]


def _kwise(model, batch, cfg):
    flat = reward_scores(model, batch)[:, 0]  # (M,) every completion of the batch, scored once
    ranks, valid = batch["ranks"], batch["valid"]
    scores = flat.new_zeros(valid.shape).masked_scatter(valid, flat)  # (P, K)
    losses = kwise_ranking_loss(scores, ranks, valid=valid)
    better = (ranks[:, :, None] < ranks[:, None, :]) & valid[:, :, None] & valid[:, None, :]  # (P, K, K)
    diffs = (scores[:, :, None] - scores[:, None, :])[better]
    return losses, diffs > 0, diffs, flat[:, None]


def _binary(model, batch, cfg):
    scores = reward_scores(model, batch)  # (B, N)
    labels = batch["labels"]
    losses = torch.stack([binary_discrimination_loss(scores[:, k], labels) for k in range(scores.shape[1])], 1)
    return losses.mean(1), (_combined(scores, cfg) > 0) == labels, None, scores


def _imitation(model, batch, cfg):
    mean_lp = compute_logprobs(model, batch).mean_logprobs  # (2B,): chosen rows, then rejected rows
    n = mean_lp.shape[0] // 2
    return -mean_lp[:n], mean_lp[:n] > mean_lp[n:], mean_lp[:n] - mean_lp[n:], mean_lp[:, None]


def _attributes(model, batch, cfg):
    pred = reward_scores(model, batch)  # (B, K)
    return attribute_regression_loss(pred, batch["targets"], valid=batch["valid"]), None, None, pred


def _gating(model, batch, cfg):
    n = batch["input_ids"].shape[0] // 2
    with torch.no_grad():  # stage 2: backbone and attribute heads frozen
        attr = reward_scores(model, batch)  # (2B, K)
        hidden = prompt_hidden_states(model, prompt_view(batch, n))  # (B, H)
    weights = model.alignlab_gating(hidden)  # (B, K) on the simplex
    losses, correct = gated_bt_loss(weights, attr[:n], attr[n:], beta=cfg.rm.gating_beta)
    c, r = gated_scores(weights, attr[:n]), gated_scores(weights, attr[n:])
    return losses, correct, c - r, torch.cat([c, r])[:, None]


def _process(model, batch, cfg):
    logits = step_scores(model, batch, batch["response_mask"])  # (N,) at each step's last token, row-major
    labels = batch["step_labels"]
    return process_reward_loss(logits, labels), (logits > 0) == labels, None, logits[:, None]


OBJECTIVES = {
    "bradley_terry": (_bt, "pairs"), "kwise": (_kwise, "ranked"), "binary": (_binary, "unpaired"),
    "imitation": (_imitation, "pairs"), "attributes": (_attributes, "attributes"),
    "gating": (_gating, "pairs"), "process": (_process, "steps"),
}
"""objective -> (forward + loss, data pipeline in PIPELINES)."""


# ---------------------------------------------------------------- model


def build_model(cfg: RewardConfig, tokenizer, attribute_names: list[str]):
    """The model the objective trains, with its new head(s) initialized from the seed."""
    objective, m = cfg.rm.objective, cfg.model
    if objective == "imitation":
        return model_from_config(m, tokenizer=tokenizer)
    kw = dict(dtype=m.dtype, trust_remote_code=m.trust_remote_code, tokenizer=tokenizer, seed=cfg.seed,
              gradient_checkpointing=m.gradient_checkpointing)
    if objective == "process":
        model = load_process_reward_model(m.path, **kw)
    elif objective == "gating":  # a saved attributes RM: keep its K heads, freeze everything, add the gate
        model = load_reward_model(m.path, **kw).requires_grad_(False)
        torch.manual_seed(cfg.seed)
        model.alignlab_gating = GatingNetwork(model.config.hidden_size, model.config.num_labels)
    else:
        heads = len(attribute_names) if objective == "attributes" else cfg.rm.ensemble_size
        model = load_reward_model(m.path, num_labels=heads, ensemble=heads > 1 and not attribute_names, **kw)
    model.config.alignlab_objective = objective
    if attribute_names:
        model.config.alignlab_attributes = list(attribute_names)
    if m.lora_r > 0 and objective != "gating":
        model = apply_reward_lora(model, r=m.lora_r, alpha=m.lora_alpha, dropout=m.lora_dropout,
                                  target_modules=m.lora_target_modules)
    return model


def save_final(model, tokenizer, cfg: RewardConfig, gain, bias, path) -> None:
    """Write the final model; a gating run stores its gate beside the frozen attribute RM."""
    if cfg.rm.objective == "imitation":
        save_model(model, tokenizer, path)
        return
    gating = model._modules.pop("alignlab_gating", None)
    save_reward_model(model, tokenizer, path, gain=gain, bias=bias, gating=gating)
    if gating is not None:
        model.alignlab_gating = gating


@torch.no_grad()
def eval_metrics(model, forward, batches: list[dict], cfg: RewardConfig, device) -> dict:
    """Held-out loss and accuracy of the training objective."""
    model.eval()
    losses, correct = [], []
    for batch in batches:
        out = forward(model, to_device(batch, device), cfg)
        losses.append(out[0].float())
        correct += [out[1].float()] if out[1] is not None else []
    model.train()
    result = {"eval_loss": float(torch.cat(losses).mean())}
    if correct:
        result["eval_accuracy"] = float(torch.cat(correct).mean())
    return result


# ---------------------------------------------------------------- the loop


def main(cfg: RewardConfig) -> dict:
    """Train; write the model, normalization and eval.json; return the final evaluation."""
    if not cfg.data.dataset:
        raise ConfigError("--dataset is required: pairs, ranked lists, labels, ratings or step rows")
    accelerator = make_accelerator(cfg.model.mixed_precision)
    main_process = accelerator.is_main_process
    run = RunDir(cfg.log.output_dir, tensorboard=cfg.log.tensorboard, wandb=cfg.log.wandb, enabled=main_process)
    ckpt = resume_point(run, cfg.resume)
    seed_everything(cfg.seed)
    forward, pipeline_name = OBJECTIVES[cfg.rm.objective]
    pipeline = PIPELINES[pipeline_name]
    # 1. read, normalize, tokenize; every row-level error surfaces here, before a model is loaded
    tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    data = prepare(cfg, pipeline, tokenizer)
    for line in data.summaries.values():
        log.info("data: %s", line)
    run.save_config(cfg)

    # 2. model, optimizer, schedule
    model = build_model(cfg, tokenizer, data.attribute_names)
    if cfg.rm.objective == "bradley_terry" and cfg.rm.share_prompt and shares_prompt(model, 2 * cfg.data.max_length):
        pipeline = PIPELINES["shared_pairs"]
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    pad_id, device, m = tokenizer.pad_token_id, accelerator.device, cfg.model
    if cfg.rm.lm_coef > 0:  # held here, not by the model: never in a checkpoint or the saved RM
        lm_head = load_lm_head(cfg.model.path, unwrap(accelerator, model), trust_remote_code=m.trust_remote_code)
        forward = functools.partial(forward, lm_head=lm_head.to(device))
    eval_batches = [pipeline.collate(b, pad_id) for b in epoch_batches(data.eval_feats, cfg, 0)]

    state = {"step": 0, "epoch": 0, "batch_index": 0}
    if ckpt is not None:
        state = load_checkpoint(ckpt, model=unwrap(accelerator, model), optimizer=optimizer, scheduler=scheduler)
        run.truncate_metrics(state["step"])
    elif eval_batches:
        run.log(0, eval_metrics(model, forward, eval_batches, cfg, device))

    shard = (accelerator.process_index, accelerator.num_processes)
    batches = epoch_batches(data.train_feats, cfg, state["epoch"], shard=shard)
    guard, meter = FiniteGuard(), Meter(device, state.get("meter"))
    progress = Progress(cfg.optim.max_steps, initial=state["step"], enabled=cfg.log.progress and main_process)
    stopping, metrics = False, {}
    model.train()

    with StopSignal() as stop:
        while state["step"] < cfg.optim.max_steps:
            # 3. next batch of examples; a new epoch reshuffles deterministically from (seed, epoch)
            if state["batch_index"] >= len(batches):
                state["epoch"], state["batch_index"] = state["epoch"] + 1, 0
                batches = epoch_batches(data.train_feats, cfg, state["epoch"], shard=shard)
            feats = batches[state["batch_index"]]
            units = sum(pipeline.units(f) for f in feats)

            # 4. forward + backward per micro-batch (chosen and rejected in one forward); every unit
            #    (pair, ranked list, labeled completion, rated response, step) of the step weighs the same
            loss, correct, margins, scores, tokens = torch.zeros((), device=device), [], [], [], 0
            for part in chunks(feats, cfg.optim.grad_accum):
                micro = pipeline.collate(part, pad_id)
                tokens += int(micro["attention_mask"].sum())
                with accelerator.autocast():
                    out = forward(model, to_device(micro, device), cfg)
                part_loss = out[0].sum() / units
                accelerator.backward(part_loss)
                loss += part_loss.detach().float()
                correct += [out[1]] if out[1] is not None else []
                margins += [out[2].detach()] if out[2] is not None else []
                scores.append(out[3].detach().float())

            # 5. clip, step, schedule
            if cfg.optim.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
            optimizer.step()
            lr = scheduler.get_last_lr()[0]  # the rate this step used
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["batch_index"] += 1
            step = state["step"]
            guard.record(step, loss, [f["row"] for f in feats])
            meter.add(step_stats(loss, correct, margins, scores), tokens=tokens)
            progress.update(step, tokens=tokens)

            # 6. log, evaluate, checkpoint: the only places that wait for the device
            stopping = stop.requested  # read once: a later signal is handled after the next step
            done = step >= cfg.optim.max_steps or stopping
            if due(step, cfg.log.log_every, done):
                guard.check()
                metrics = {"step": step, **meter.flush(), "lr": lr, "epoch": state["epoch"]}
                progress.set_loss(metrics["loss"])
            if eval_batches and due(step, cfg.log.eval_every, done):
                metrics.update(eval_metrics(model, forward, eval_batches, cfg, device))
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
    if stopping or not main_process:
        run.close()
        return metrics

    # 7. normalization on the reference set, the final model, and the evaluation
    plain = unwrap(accelerator, model)
    score_fn = scorer(plain, cfg.rm.objective, gated=False)
    gain, bias = (None, None) if data.reference is None else compute_normalization(
        score_rows(score_fn, data.reference, pad_id, batch_size=cfg.rm.eval_batch_size, device=device))
    save_final(plain, tokenizer, cfg, gain, bias, run.path)
    result = final_eval(plain, data, cfg, pipeline.collate, pad_id, run.path, device)
    if gain is not None:
        result["normalization"] = {"gain": gain, "bias": bias,
                                   "reference": cfg.rm.normalize_on, "completions": len(data.reference)}
    result["last_train_metrics"] = metrics
    (run.path / "eval.json").write_text(json.dumps(result, indent=2))
    log.info("evaluation written to %s", run.path / "eval.json")
    run.close()
    return result
