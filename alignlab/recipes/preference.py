"""Offline preference optimization: DPO and its family (IPO, cDPO, rDPO, ODPO, KTO, ORPO, SimPO, CPO, RRHF, PRO,
TDPO, ...; table in docs/preference.md), with TR-DPO reference updates and sDPO stages.

Run:
    alignlab dpo --model runs/sft --dataset prefs.jsonl --loss dpo --pref.beta 0.1 --output-dir runs/dpo
    alignlab dpo --model runs/sft --dataset prefs.jsonl --loss kto --pref.tr-dpo hard   # or --pref.sdpo-stages 2

Algorithm (Rafailov et al. 2023, arXiv:2305.18290, §4; every loss is one function in `alignlab.losses`):
  0. reference log-probs of every pair, computed once and cached on disk (or a live frozen copy / LoRA base)
  1. one forward over chosen||rejected (2B rows; by default B rows of prompt + chosen + rejected, the prompt
     computed once, for policy and live reference) -> summed and token-mean log-probs of each completion
  2. per-example loss, mean over the step's examples, + NLL terms (RPO/CPO/ORPO/RRHF/PRO); backward, AdamW
  3. TR-DPO: every tau steps ref <- alpha*policy + (1-alpha)*ref; sDPO: each stage's ref = the policy so far
Departures: KTO's mismatched (x, y') pairs for its KL reference point are fixed once by shifting completions by
one in a seeded order (TRL shifts per batch), so they can be precomputed; BCO's delta is the running mean of the
rewards of the *previous* steps; sDPO's partitions are a seeded random split (the paper orders them by
difficulty); KTO's "accuracy" is the share of examples whose reward has the sign of their label.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal, NamedTuple

import torch
import tyro
from safetensors.torch import load_file, load_model

from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig
from alignlab.errors import ConfigError
from alignlab.losses import listwise, preference, reference_free, tdpo, unpaired
from alignlab.models import load_tokenizer, model_from_config
from alignlab.models import save_model as save_hf
from alignlab.models.reference import (
    LiveReference,
    PrecomputedReference,
    frozen_copy,
    save_reference_weights,
    sync_reference,
)
from alignlab.models.shared_prompt import supports_shared_prompt
from alignlab.recipes.preference_data import (
    epoch_batches,
    featurize,
    load_examples,
    partitions,
    stage_of,
    stage_references,
)
from alignlab.recipes.preference_terms import kto_terms, list_terms, pair_terms
from alignlab.runtime import (
    FiniteGuard,
    Meter,
    Progress,
    RunDir,
    StopSignal,
    batch_rows,
    batch_tokens,
    due,
    latest_checkpoint,
    load_checkpoint,
    make_accelerator,
    make_optimizer,
    make_scheduler,
    save_step,
    seed_everything,
    to_device,
    unwrap,
)

log = logging.getLogger("alignlab")


class Loss(NamedTuple):
    """A loss function, what it reads, and its keyword arguments from (options, batch, state)."""

    fn: Callable
    inputs: str  # "ref": (pc, pr, rc, rr) summed log-probs; "ref+kl": also per-sequence KL (TDPO);
    # "seq" / "mean": (pc, pr) summed / token-mean log-probs, no reference; "kto": unpaired; "list": ranked
    kwargs: Callable


_b = lambda o, b, s: {"beta": o.beta}
_bls = lambda o, b, s: {"beta": o.beta, "label_smoothing": o.label_smoothing}


LOSSES: dict[str, Loss] = {
    "dpo": Loss(preference.dpo_loss, "ref", _bls),
    "cdpo": Loss(preference.dpo_loss, "ref", _bls),  # conservative DPO = DPO with label_smoothing > 0
    "robust": Loss(preference.robust_dpo_loss, "ref", _bls),
    "ipo": Loss(preference.ipo_loss, "ref", _b),
    "hinge": Loss(preference.hinge_loss, "ref", _b),
    "odpo": Loss(preference.odpo_loss, "ref", lambda o, b, s: {"beta": o.beta, "offset": b["offset"],
                                                               "alpha": o.odpo_alpha}),  # offset = score gap
    "sppo_hard": Loss(preference.sppo_hard_loss, "ref", _b),
    "exo_pair": Loss(preference.exo_pair_loss, "ref", lambda o, b, s: {"beta": o.beta,
                                                                       "label_smoothing": o.label_smoothing or 1e-3}),
    "nca_pair": Loss(preference.nca_pair_loss, "ref", _b),
    "bco_pair": Loss(preference.bco_pair_loss, "ref", lambda o, b, s: {"beta": o.beta, "delta": s["bco_delta"]}),
    "aot": Loss(preference.aot_loss, "ref", _bls),
    "aot_pair": Loss(preference.aot_pair_loss, "ref", _bls),
    "apo_zero": Loss(preference.apo_zero_loss, "ref", _b),
    "apo_down": Loss(preference.apo_down_loss, "ref", _b),
    "discopop": Loss(preference.discopop_loss, "ref", lambda o, b, s: {"beta": o.beta, "tau": o.discopop_tau}),
    "tdpo": Loss(tdpo.tdpo_loss, "ref+kl", lambda o, b, s: {"beta": o.beta, "alpha": o.tdpo_alpha,
                                                            "variant": o.tdpo_variant}),
    "simpo": Loss(reference_free.simpo_loss, "mean", lambda o, b, s: {"beta": o.beta, "gamma": o.simpo_gamma}),
    "cpo": Loss(reference_free.cpo_loss, "seq", _bls),
    "orpo": Loss(reference_free.orpo_loss, "mean", lambda o, b, s: {"beta": o.orpo_lambda}),
    "kto": Loss(unpaired.kto_loss, "kto", lambda o, b, s: {"beta": o.beta, "desirable_weight": o.kto_desirable_weight,
                                                           "undesirable_weight": o.kto_undesirable_weight}),
    "rrhf": Loss(listwise.rrhf_loss, "list", lambda o, b, s: {"valid": b["valid"]}),
    "pro": Loss(listwise.pro_loss, "list", lambda o, b, s: {"valid": b["valid"]}),
}
DATA_KIND = {"kto": "unpaired", "list": "ranked"}  # every other input kind reads preference pairs
LossName = Literal["dpo", "cdpo", "robust", "ipo", "hinge", "odpo", "sppo_hard", "exo_pair", "nca_pair", "bco_pair",
                   "aot", "aot_pair", "apo_zero", "apo_down", "discopop", "tdpo", "simpo", "cpo", "orpo", "kto",
                   "rrhf", "pro"]


@dataclass
class PreferenceOptions:
    """Which preference loss, its coefficients, and how the reference policy is held."""

    loss: Annotated[LossName, tyro.conf.arg(aliases=("--loss",))] = "dpo"
    """Loss function (docs/preference.md has the table: paper, equation, data type)."""
    beta: float = 0.1
    """Temperature of the implicit reward beta*log(pi/ref) (DPO family; SimPO's beta; KTO's beta)."""
    label_smoothing: float = 0.0
    """Assumed label-flip rate: cDPO/rDPO/CPO/AOT (0 = clean labels); EXO's epsilon (0 means 1e-3)."""
    rpo_alpha: float = 0.0
    """Adds rpo_alpha * NLL of the chosen completion (token mean) to a pairwise loss: RPO / Nemotron-4."""
    odpo_alpha: float = 1.0
    """ODPO: scale of the offset computed from score_chosen - score_rejected (or `margin`)."""
    discopop_tau: float = 0.05
    """DiscoPOP: temperature of the logistic/exponential mixing."""
    simpo_gamma: float = 0.5
    """SimPO: target reward margin gamma."""
    cpo_alpha: float = 1.0
    """CPO: weight of the NLL of the chosen completion."""
    orpo_lambda: float = 0.1
    """ORPO: weight lambda of the odds-ratio term (the NLL of the chosen completion has weight 1)."""
    kto_desirable_weight: float = 1.0
    """KTO: lambda_D, weight of desirable examples."""
    kto_undesirable_weight: float = 1.0
    """KTO: lambda_U, weight of undesirable examples."""
    tdpo_alpha: float = 0.5
    """TDPO: weight of the sequential-KL term."""
    tdpo_variant: Literal["tdpo1", "tdpo2"] = "tdpo2"
    """TDPO1 or TDPO2 (stop-gradient on the chosen KL and alpha weighting)."""
    sft_weight: float = 1.0
    """RRHF/PRO: weight of the NLL of the best completion of each list."""
    reference: Literal["auto", "copy", "lora_base", "precomputed"] = "auto"
    """Reference policy: auto = precomputed, or lora_base/copy where a live one is needed (TDPO, TR-DPO)."""
    ref_cache_dir: str | None = None
    """Where precomputed reference log-probs are cached (default: $ALIGNLAB_CACHE/ref_logprobs)."""
    tr_dpo: Literal["none", "soft", "hard"] = "none"
    """TR-DPO reference updates every tr_tau steps: soft ref <- a*policy + (1-a)*ref, hard ref <- policy."""
    tr_alpha: float = 0.6
    """TR-DPO soft-update weight alpha."""
    tr_tau: int = 512
    """TR-DPO: steps between reference updates."""
    sdpo_stages: int = 1
    """sDPO: train on this many data partitions in turn; each stage's reference = the previous stage's policy."""
    share_prompt: bool = True
    """Pairwise losses: one row per pair, prompt + chosen + rejected (4D attention mask), the prompt computed once
    by policy and reference; same log-probs as separate rows to float rounding (off: 2B rows, also for models
    whose attention takes no custom mask)."""

    def __post_init__(self):
        moving = self.tr_dpo != "none" or self.sdpo_stages > 1
        for bad, message in (
            (self.beta <= 0 or self.tr_tau < 1 or self.sdpo_stages < 1, "pref.beta must be > 0, pref.tr_tau and "
             "pref.sdpo_stages >= 1"),
            (not 0.0 <= self.label_smoothing < 0.5, f"pref.label_smoothing must be in [0, 0.5), got "
             f"{self.label_smoothing}"),
            (self.loss == "cdpo" and self.label_smoothing == 0, "--loss cdpo needs --pref.label-smoothing > 0"),
            (not 0.0 < self.tr_alpha <= 1.0, f"pref.tr_alpha must be in (0, 1], got {self.tr_alpha}"),
            (self.rpo_alpha and LOSSES[self.loss].inputs in ("kto", "list"), "pref.rpo_alpha applies to pairwise "
             f"losses, not '{self.loss}'"),
            (self.reference == "precomputed" and (self.loss == "tdpo" or self.tr_dpo != "none"), "TDPO and TR-DPO "
             "need a live reference: set --pref.reference copy (or lora_base)"),
            (self.reference == "lora_base" and moving, "TR-DPO and sDPO update the reference: use "
             "--pref.reference copy (or precomputed)")):
            if bad:
                raise ConfigError(message)

    @property
    def nll_coef(self) -> float:
        """Weight of the token-mean NLL of the chosen (best) completion added to the loss."""
        extra = {"cpo": self.cpo_alpha, "orpo": 1.0, "rrhf": self.sft_weight, "pro": self.sft_weight}
        return self.rpo_alpha + extra.get(self.loss, 0.0)


@dataclass
class PreferenceConfig:
    """Offline preference optimization on preference pairs, unpaired labels (KTO) or ranked lists."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="prefs.jsonl"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-6, warmup_steps=10))
    log: LogConfig = field(default_factory=LogConfig)
    pref: PreferenceOptions = field(default_factory=PreferenceOptions)
    seed: int = 0
    """Seed for data order, initialization of new weights, and sampling."""
    resume: bool = False
    """Continue from the newest checkpoint in the output directory."""

    def __post_init__(self):
        if self.pref.reference == "lora_base" and self.model.lora_r == 0:
            raise ConfigError("pref.reference=lora_base needs LoRA: set --model.lora-r (e.g. 16)")
        if self.data.packing:
            raise ConfigError("data.packing is not supported for preference data (batches are length-grouped)")
        if self.pref.sdpo_stages > self.optim.max_steps:
            raise ConfigError("pref.sdpo_stages must be <= optim.max_steps")

    @property
    def data_kind(self) -> str:
        """What the loss reads: preference pairs, unpaired labels (KTO) or ranked lists (RRHF, PRO)."""
        return DATA_KIND.get(LOSSES[self.pref.loss].inputs, "preference")

    @property
    def reference_mode(self) -> str:
        """The reference actually used: none (reference-free loss), copy, lora_base or precomputed."""
        p = self.pref
        if LOSSES[p.loss].inputs in ("seq", "mean", "list"):
            return "none"
        if p.reference != "auto":
            return p.reference
        if p.tr_dpo != "none" or (p.loss == "tdpo" and self.model.lora_r == 0):
            return "copy"
        return "lora_base" if p.loss == "tdpo" else "precomputed"


# ---------------------------------------------------------------- one step (loss terms: preference_terms.py)


def step_terms(model, ref, micros: list[dict], cfg: PreferenceConfig, accelerator, state, backward: bool):
    """Loss (and backward when asked) over one step's micro-batches; mean over examples + NLL per token."""
    loss_spec, device = LOSSES[cfg.pref.loss], accelerator.device
    terms = {"kto": kto_terms, "list": list_terms}.get(loss_spec.inputs, pair_terms)
    n_examples = sum(m["index"].shape[0] for m in micros)
    nll_tokens = sum(int((m["response_mask"] & (m["segments"] == 1)).sum()) if "segments" in m else
                     int(m["response_mask"][m["nll_rows"]].sum()) for m in micros)  # host tensors: no sync
    total, sums = torch.zeros((), device=device), {}
    state["bco_delta"] = state["bco"][0] / state["bco"][1].clamp(min=1)  # BCO: mean reward of previous steps
    for micro in micros:
        micro = to_device(micro, device)
        with accelerator.autocast():
            losses, nll, metrics = terms(model, ref, micro, loss_spec, cfg.pref, state)
        part = losses.sum() / n_examples + cfg.pref.nll_coef * nll / max(nll_tokens, 1)
        if backward:
            accelerator.backward(part)
        total += part.detach().float()
        sums = {k: (sums.get(k, (0, 0))[0] + s, sums.get(k, (0, 0))[1] + c) for k, (s, c) in metrics.items()}
    means = {k: s / (c.clamp(min=1) if torch.is_tensor(c) else max(c, 1)) for k, (s, c) in sums.items()}
    means.setdefault("rewards/margin", means["rewards/chosen"] - means["rewards/rejected"])  # KTO: of the means
    return total, {"loss": total, **means}


@torch.no_grad()
def evaluate(model, ref, batches: list[list[dict]], cfg: PreferenceConfig, accelerator, state) -> dict:
    """Mean held-out loss, reward accuracy, margins, ... (one sync at the end)."""
    model.eval()
    meter = Meter(accelerator.device)
    for micros in batches:
        meter.add(step_terms(model, ref, micros, cfg, accelerator, state, backward=False)[1])
    model.train()
    return {f"eval/{k}": v for k, v in meter.flush().items() if k != "tokens_per_s"}


# ---------------------------------------------------------------- the loop


def main(cfg: PreferenceConfig) -> dict:
    """Train; return the last logged metrics. Writes the run directory described in docs/runs.md."""
    accelerator = make_accelerator(cfg.model.mixed_precision)
    main_process = accelerator.is_main_process
    run = RunDir(cfg.log.output_dir, tensorboard=cfg.log.tensorboard, wandb=cfg.log.wandb, enabled=main_process)
    seed_everything(cfg.seed)
    train, held = load_examples(cfg.data, cfg.data_kind, seed=cfg.seed, offsets=cfg.pref.loss == "odpo")
    tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    train_feats, eval_feats = (featurize(x, cfg.data_kind, tokenizer, cfg.data, seed=cfg.seed) for x in (train, held))
    parts = partitions(train_feats, cfg.pref.sdpo_stages, seed=cfg.seed)
    run.save_config(cfg)
    model = model_from_config(cfg.model, tokenizer=tokenizer)
    mode, pad_id, device = cfg.reference_mode, tokenizer.pad_token_id, accelerator.device
    shared = (cfg.pref.share_prompt and cfg.data_kind == "preference"
              and supports_shared_prompt(model, max_tokens=2 * cfg.data.max_length))
    log.info("loss %s, reference: %s%s", cfg.pref.loss, mode, ", prompt shared by chosen and rejected" * shared)
    live = None  # 0. the reference: a frozen copy, the LoRA base of the policy, or log-probs computed once
    if mode in ("copy", "lora_base"):
        live = LiveReference(frozen_copy(model).to(device) if mode == "copy" else model, adapters_off=mode != "copy",
                             autocast=accelerator.autocast)
    refs_of = functools.partial(stage_references, cfg, model, live, tokenizer, accelerator, n_train=len(train_feats),
                                shared=shared)
    refs, files = refs_of({"train": parts[0], "eval": eval_feats})
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    moving_ref = live is not None and (cfg.pref.tr_dpo != "none" or cfg.pref.sdpo_stages > 1)
    state = {"step": 0, "epoch": 0, "batch_index": 0, "stage": 0}
    extra = {"bco": torch.zeros(2, device=device)}  # BCO's running reward sum and count
    batches_of = functools.partial(epoch_batches, batch_size=cfg.optim.batch_size, grad_accum=cfg.optim.grad_accum,
                                   seed=cfg.seed, pad_id=pad_id, shared=shared)
    eval_batches = batches_of(eval_feats, epoch=0) if eval_feats else []
    ckpt = latest_checkpoint(run.path) if cfg.resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model=unwrap(accelerator, model), optimizer=optimizer, scheduler=scheduler)
        run.truncate_metrics(state["step"])
        extra["bco"] = torch.tensor(state.get("bco", [0.0, 0.0]), device=device)
        if state.get("reference_file"):
            load_model(live.model, str(run.path / "reference" / state["reference_file"]))
        if state.get("ref_files"):  # the (sDPO stage's) precomputed tables this run was using
            files = state["ref_files"]
            refs = {"eval": None} | {k: PrecomputedReference(load_file(p)["ref"].to(device)) for k, p in files.items()}
    elif eval_batches:
        run.log(0, evaluate(model, refs["eval"], eval_batches, cfg, accelerator, extra))

    rank, world = accelerator.process_index, accelerator.num_processes
    batches = batches_of(parts[state["stage"]], epoch=state["epoch"], rank=rank, world=world)
    guard, meter = FiniteGuard(), Meter(device, state.get("meter"))
    progress = Progress(cfg.optim.max_steps, initial=state["step"], enabled=cfg.log.progress and main_process)
    stopping = False
    metrics: dict = {}
    model.train()

    with StopSignal() as stop:
        while state["step"] < cfg.optim.max_steps:
            # 1. sDPO: a new stage trains on the next partition against the policy it starts from
            stage = stage_of(state["step"], cfg.pref.sdpo_stages, cfg.optim.max_steps)
            if stage != state["stage"]:
                state.update(stage=stage, epoch=0, batch_index=0)
                log.info("sDPO stage %d/%d: ref = policy at step %d", stage + 1, cfg.pref.sdpo_stages, state["step"])
                if live is not None:
                    sync_reference(live.model, unwrap(accelerator, model), 1.0)
                refs, files = refs_of({"train": parts[state["stage"]], "eval": eval_feats})
                batches = batches_of(parts[state["stage"]], epoch=0, rank=rank, world=world)
            # 2. next batch; a new epoch reshuffles deterministically from (seed, epoch)
            if state["batch_index"] >= len(batches):
                state["epoch"], state["batch_index"] = state["epoch"] + 1, 0
                batches = batches_of(parts[state["stage"]], epoch=state["epoch"], rank=rank, world=world)
            micros = batches[state["batch_index"]]

            # 3. one forward over chosen||rejected per micro-batch, loss, backward
            loss, step_metrics = step_terms(model, refs["train"], micros, cfg, accelerator, extra, backward=True)

            # 4. clip, step, schedule; TR-DPO moves the reference toward the policy every tau steps
            if cfg.optim.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["batch_index"] += 1
            step = state["step"]
            if cfg.pref.tr_dpo != "none" and step % cfg.pref.tr_tau == 0:
                sync_reference(live.model, unwrap(accelerator, model), 1.0 if cfg.pref.tr_dpo == "hard" else
                               cfg.pref.tr_alpha)
            tokens = sum(batch_tokens(m) for m in micros)
            guard.record(step, loss, [r for m in micros for r in batch_rows(m)])
            meter.add(step_metrics, tokens=tokens)
            progress.update(step, tokens=tokens)

            # 5. log, evaluate, checkpoint: the only places that wait for the device
            stopping = stop.requested  # read once: a later signal is handled after the next step
            done = step >= cfg.optim.max_steps or stopping
            if due(step, cfg.log.log_every, done):
                guard.check()
                metrics = {"step": step, **meter.flush(), "lr": scheduler.get_last_lr()[0], "epoch": state["epoch"]}
                metrics.update({"stage": state["stage"]} if cfg.pref.sdpo_stages > 1 else {})
                progress.set_loss(metrics["loss"])
            if eval_batches and due(step, cfg.log.eval_every, done):
                metrics.update(evaluate(model, refs["eval"], eval_batches, cfg, accelerator, extra))
            if metrics.get("step") == step:
                run.log(step, metrics)
            if due(step, cfg.log.save_every, done):
                kept = {int(p.name[5:]) for p in run.checkpoints_dir.glob("step-*")}
                state.update(bco=extra["bco"].tolist(), ref_files=files, reference_file=None)
                moved = [lambda step=step, kept=kept: {"reference_file": save_reference_weights(
                    live.model, run.path / "reference", step, kept)}] if moving_ref else []  # after the finite check
                save_step(run, step, guard=guard, meter=meter, state=state, write=main_process,
                          keep=cfg.log.keep_checkpoints, prepare=moved, model=unwrap(accelerator, model),
                          tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler)
            if stopping:
                log.info("stop requested: saved step %d, exiting", step)
                break
    progress.close()
    if main_process and not stopping:
        save_hf(unwrap(accelerator, model), tokenizer, run.path)
    run.close()
    return metrics
