"""Critic-free policy gradient for language models: GRPO, Dr.GRPO, DAPO, RLOO, ReMax, REINFORCE++.

Run:
    alignlab grpo --model runs/sft --dataset lab:arithmetic-prompts --reward.sources lab:arithmetic-gold \\
        --output-dir runs/grpo --max-steps 100
    alignlab grpo --config examples/grpo.yaml --pg.advantage rloo --pg.kl-coef 0.02

One step, B = P prompts x G completions (`rollout.prompts_per_step`, `rollout.group_size`), numbered so in `main`:
  1. sample      G completions per prompt (DAPO: drop all-equal groups and sample more; ReMax: + one greedy one)
  2. score       one batched reward call (DAPO: + overlong penalty); old log-probs only when the update is not
                 fully on-policy or the KL goes into the reward, reference log-probs only with a KL term
  3. advantages  the estimator's baseline (`ESTIMATORS`); with `kl_in: reward` the KL is subtracted first
  4. update      `pg.epochs` x `pg.minibatches` clipped-surrogate steps (+ kl_coef * KL with `kl_in: loss`),
                 reduced by `aggregate(..., mode=pg.aggregate)`, times truncated importance weights (TIS)
  5. log / checkpoint; generations to `samples/step-N.jsonl` every `rollout.sample_every` steps

Every estimator's defaults are written out in `PRESETS`; a `pg.*` field set explicitly overrides its preset
(the effective values are logged at start and are `PGConfig.settings`). Departures from the papers:
- the learning rate schedule advances once per RL step (all minibatch updates of a step share one rate);
- ReMax's greedy baseline is the raw score of the greedy completion (no KL shaping: it needs no extra forward
  and, being independent of the sampled completion, keeps the gradient unbiased);
- DAPO's dynamic sampling is bounded: after `max_resample` extra rounds the step trains on the groups it has
  (with none left it trains on the last round as sampled, whose group advantages are all 0);
- with several processes each samples its own P prompts; REINFORCE++ whitens with the mean/std of all processes'
  tokens (one all-reduce of three numbers), as if one process held the whole batch.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Annotated, Literal

import torch
import tyro

from alignlab import advantages as adv
from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig, RolloutConfig
from alignlab.data.split import train_eval_split
from alignlab.errors import ConfigError
from alignlab.losses import aggregate
from alignlab.losses.pg import approx_kl, clipped_policy_loss, kl_estimate, truncated_is_weights
from alignlab.models import compute_logprobs, load_tokenizer, model_from_config, save_model
from alignlab.models.reference import LiveReference, policy_reference
from alignlab.models.value import disable_dropout
from alignlab.rewards import RewardSourceConfig, build_reward
from alignlab.rollout import make_engine
from alignlab.rollout.experience import (
    Experience,
    PromptSampler,
    collect,
    concat,
    load_prompts,
    minibatches,
    rollout_metrics,
    sample,
    sampling_of,
    score,
    write_samples,
)
from alignlab.runtime import (
    FiniteGuard,
    Meter,
    Progress,
    RunDir,
    StopSignal,
    clip_grad,
    due,
    load_checkpoint,
    make_accelerator,
    make_optimizer,
    make_scheduler,
    micro_batches,
    process_sum,
    resume_point,
    save_step,
    seed_everything,
    to_device,
    unwrap,
)

log = logging.getLogger("alignlab")

Advantage = Literal["grpo", "dr_grpo", "dapo", "rloo", "remax", "reinforce_pp"]
Aggregate = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"]

PRESETS: dict[str, dict] = {
    # Shao et al. 2024 (arXiv:2402.03300) Eq. 3-4: k3 KL loss, beta 0.04; token mean per sequence, then mean.
    "grpo": dict(kl_coef=0.04, kl_estimator="k3", kl_in="loss", clip_eps=0.2, clip_eps_high=0.2,
                 aggregate="seq_mean_token_mean", dynamic_sampling=False, overlong_buffer=0.0),
    # Liu et al. 2025 (arXiv:2503.20783) §3.1: no std, sum / (B * max_new_tokens) (no length bias), no KL.
    "dr_grpo": dict(kl_coef=0.0, kl_estimator="k3", kl_in="none", clip_eps=0.2, clip_eps_high=0.2,
                    aggregate="seq_mean_token_sum_norm", dynamic_sampling=False, overlong_buffer=0.0),
    # Yu et al. 2025 (arXiv:2503.14476): clip-higher 0.28, token-level loss, dynamic sampling, overlong
    # punishment over the last 20% of the budget (4096 of 20480 in the paper), no KL.
    "dapo": dict(kl_coef=0.0, kl_estimator="k3", kl_in="none", clip_eps=0.2, clip_eps_high=0.28,
                 aggregate="token_mean", dynamic_sampling=True, overlong_buffer=0.2),
    # Ahmadian et al. 2024 (arXiv:2402.14740) Eq. 6: sequence-level REINFORCE, KL penalty in the reward.
    "rloo": dict(kl_coef=0.05, kl_estimator="k1", kl_in="reward", clip_eps=0.2, clip_eps_high=0.2,
                 aggregate="seq_mean_token_sum", dynamic_sampling=False, overlong_buffer=0.0),
    # Li et al. 2023 (arXiv:2310.10505) Algorithm 1: sequence-level REINFORCE with the greedy baseline.
    "remax": dict(kl_coef=0.05, kl_estimator="k1", kl_in="reward", clip_eps=0.2, clip_eps_high=0.2,
                  aggregate="seq_mean_token_sum", dynamic_sampling=False, overlong_buffer=0.0),
    # Hu 2025 (arXiv:2501.03262) §3: token-level KL penalty (k1) in the reward, global batch normalization.
    "reinforce_pp": dict(kl_coef=0.01, kl_estimator="k1", kl_in="reward", clip_eps=0.2, clip_eps_high=0.2,
                         aggregate="token_mean", dynamic_sampling=False, overlong_buffer=0.0),
}
"""Per-estimator defaults of the `pg` fields left unset (None)."""

ESTIMATORS = {
    # (B,) scores -> (B,) sequence advantages; `baseline` is ReMax's greedy score per row
    "grpo": lambda scores, g, baseline: adv.group_advantages(scores, g),
    "dr_grpo": lambda scores, g, baseline: adv.group_advantages(scores, g, scale_by_std=False),
    "dapo": lambda scores, g, baseline: adv.group_advantages(scores, g),
    "rloo": lambda scores, g, baseline: adv.rloo_advantages(scores, g),
    "remax": lambda scores, g, baseline: adv.remax_advantages(scores, baseline),
}
"""Sequence-level estimators; `reinforce_pp` works on per-token rewards (see `compute_advantages`)."""


@dataclass
class PGOptions:
    """The critic-free family: estimator, KL, clipping, reduction, update schedule. A field left unset (None)
    takes the estimator's preset (`PRESETS`, listed in docs/grpo.md)."""

    advantage: Annotated[Advantage, tyro.conf.arg(aliases=("--advantage",))] = "grpo"
    """Advantage estimator: grpo, dr_grpo, dapo, rloo, remax or reinforce_pp."""
    kl_coef: float | None = None
    """Weight of the KL to the reference policy (0 with kl_in loss/reward: KL only logged)."""
    kl_estimator: Literal["k1", "k2", "k3"] | None = None
    """Per-token KL estimator (Schulman 2020): k1 = log p/q, k2 = (log p/q)^2 / 2, k3 = q/p - log q/p - 1."""
    kl_in: Literal["loss", "reward", "none"] | None = None
    """Where the KL goes: a loss term (GRPO), subtracted from the reward (RLOO, REINFORCE++), or nowhere."""
    clip_eps: float | None = None
    """PPO clip range: the ratio is kept >= 1 - clip_eps (and <= 1 + clip_eps_high)."""
    clip_eps_high: float | None = None
    """Upper clip range (DAPO clip-higher: 0.28)."""
    aggregate: Aggregate | None = None
    """Loss reduction over tokens: token_mean, seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm."""
    aggregate_constant: float | None = None
    """Normalizer of seq_mean_token_sum_norm (Dr.GRPO); default rollout.max_new_tokens."""
    dynamic_sampling: bool | None = None
    """DAPO: drop groups whose scores are all equal and sample more prompts to refill the batch."""
    max_resample: int = 3
    """Extra sampling rounds dynamic sampling may spend per step before training on what it has."""
    overlong_buffer: float | None = None
    """DAPO overlong punishment: the last fraction of max_new_tokens over which it ramps to -1 (0 = off)."""
    overlong_coef: float = 1.0
    """Weight of the overlong penalty added to the score."""
    epochs: int = 1
    """Passes over each step's experience (PPO epochs); 1 with minibatches 1 is fully on-policy."""
    minibatches: int = 1
    """Optimizer steps per epoch, each on 1/minibatches of the step's rows (shuffled)."""
    tis_cap: float = 2.0
    """Truncated importance sampling: weights min(pi_old / pi_sampler, cap) with engine log-probs (0 = off)."""

    def __post_init__(self):
        for name in ("kl_coef", "clip_eps", "clip_eps_high", "overlong_coef", "tis_cap"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"pg.{name} must be >= 0, got {value}")
        for name, low in (("epochs", 1), ("minibatches", 1), ("max_resample", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"pg.{name} must be >= {low}, got {getattr(self, name)}")
        if self.overlong_buffer is not None and not 0.0 <= self.overlong_buffer <= 1.0:
            raise ConfigError(f"pg.overlong_buffer is a fraction of max_new_tokens in [0, 1], got "
                              f"{self.overlong_buffer}")
        if self.aggregate_constant is not None and self.aggregate_constant <= 0:
            raise ConfigError(f"pg.aggregate_constant must be > 0, got {self.aggregate_constant}")


@dataclass
class PGConfig:
    """Critic-free online RL (GRPO family) on a prompt dataset with a reward source."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="lab:arithmetic-prompts"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, scheduler="constant"))
    log: LogConfig = field(default_factory=LogConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardSourceConfig = field(default_factory=lambda: RewardSourceConfig(sources=["lab:arithmetic-gold"]))
    pg: PGOptions = field(default_factory=PGOptions)
    seed: int = 0
    """Seed for prompt order, sampling and minibatch shuffling."""
    resume: bool = False
    """Continue from the newest checkpoint in the output directory."""

    def __post_init__(self):
        s, g = self.settings, self.rollout.group_size
        if s.advantage in ("grpo", "dr_grpo", "dapo", "rloo") and g < 2:
            raise ConfigError(f"pg.advantage {s.advantage} compares the samples of a prompt: set "
                              f"rollout.group_size >= 2 (got {g})")
        if s.dynamic_sampling and g < 2:
            raise ConfigError("pg.dynamic_sampling drops groups with equal scores: set rollout.group_size >= 2")
        if s.minibatches > self.rollout.prompts_per_step * g:
            raise ConfigError(f"pg.minibatches {s.minibatches} exceeds the step's {self.rollout.prompts_per_step * g}"
                              " completions (rollout.prompts_per_step x rollout.group_size)")
        if s.clip_eps >= 1.0:
            raise ConfigError(f"pg.clip_eps must be < 1 (the ratio is kept >= 1 - clip_eps), got {s.clip_eps}")
        if self.pg.overlong_buffer and round(s.overlong_buffer * self.rollout.max_new_tokens) < 1:
            raise ConfigError(f"pg.overlong_buffer {self.pg.overlong_buffer} of rollout.max_new_tokens "
                              f"{self.rollout.max_new_tokens} is less than one token")

    @property
    def settings(self) -> PGOptions:
        """The effective pg options: the estimator's preset with the explicitly set fields on top, and the
        Dr.GRPO constant defaulting to max_new_tokens. Derived on each access, never written back."""
        chosen = {k: v for k, v in dataclasses.asdict(self.pg).items() if v is not None}
        merged = {"aggregate_constant": float(self.rollout.max_new_tokens), **PRESETS[self.pg.advantage], **chosen}
        return PGOptions(**merged)


def needs_old_logprobs(s: PGOptions) -> bool:
    """False for one epoch of one minibatch (old = current, detached) unless the KL goes into the reward."""
    return s.epochs > 1 or s.minibatches > 1 or s.kl_in == "reward"


# ---------------------------------------------------------------- the step's pieces


def make_reference(model, s: PGOptions, autocast) -> LiveReference | None:
    """The reference policy when there is a KL term: the LoRA base (adapters off) or a frozen copy."""
    if s.kl_in == "none":
        return None
    return policy_reference(model, autocast=autocast)


def sample_step(cfg: PGConfig, s: PGOptions, engine, reward, prompts, order: PromptSampler, step: int, *,
                policy, reference, autocast, shard: tuple[int, int], pad_id: int) -> tuple[Experience, int]:
    """# 1. sample and # 2. score: one step's experience (refilled by DAPO) and the number of groups dropped."""
    ro, g, sampling = cfg.rollout, cfg.rollout.group_size, sampling_of(cfg.rollout)
    parts, kept_rows, dropped, last = [], 0, 0, None
    for attempt in range(1 + (s.max_resample if s.dynamic_sampling else 0)):
        indices = order.next(ro.prompts_per_step, rank=shard[0], world=shard[1])
        last = collect(engine, reward, prompts, indices, sampling, group_size=g, policy=policy, reference=reference,
                       seed=(cfg.seed * 1_000_003 + step) * 17 + attempt, autocast=autocast,
                       batch_size=max(1, ro.prompts_per_step * g // s.minibatches))
        if s.advantage == "remax":  # the greedy completion's score is the baseline of its prompt's samples
            greedy, columns = sample(engine, prompts, indices, sampling_of(ro, temperature=0), 1)
            last.tensors["baseline"] = score(reward, greedy, columns).repeat_interleave(g)
        if not s.dynamic_sampling:
            return last, 0
        keep = ~adv.zero_variance_groups(last.scores, g)  # (B,)
        dropped += int((~keep).sum()) // g
        parts.append(last.select(keep.nonzero().flatten()))
        kept_rows += parts[-1].scores.shape[0]
        if kept_rows >= ro.prompts_per_step * g:
            break
    if kept_rows == 0:
        return last, dropped
    exp = concat([p for p in parts if len(p)], pad_id)
    return exp.select(range(min(len(exp), ro.prompts_per_step * g))), dropped


def compute_advantages(exp: Experience, s: PGOptions, max_new_tokens: int, reduce=None) -> tuple[torch.Tensor, dict]:
    """# 3. advantages (B, T), 0 off the response mask, and diagnostics; `reduce` sums over processes (REINFORCE++)."""
    mask, scores = exp.response_mask, exp.scores
    buffer = round(s.overlong_buffer * max_new_tokens)  # a fraction of the budget, in tokens
    if buffer > 0:  # DAPO Eq. 13: added to the (verifiable) score
        scores = scores + s.overlong_coef * adv.overlong_penalty(exp.lengths, max_length=max_new_tokens,
                                                                  buffer=buffer)
    kl = None
    if s.kl_in == "reward":  # the behaviour policy's KL to the reference, per token, (B, T)
        kl = torch.where(mask, kl_estimate(exp.old_logprobs, exp.ref_logprobs, kind=s.kl_estimator), 0.0)
    if s.advantage == "reinforce_pp":
        rewards = adv.token_rewards(scores, mask, kl=kl, kl_coef=s.kl_coef)  # (B, T)
        advantages = adv.reinforce_pp_advantages(rewards, mask, reduce=reduce)
    else:
        shaped = scores if kl is None else scores - s.kl_coef * kl.sum(-1)  # (B,)
        seq = ESTIMATORS[s.advantage](shaped, exp.group_size, exp.tensors.get("baseline"))
        advantages = adv.expand(seq, mask)
    stats = {"advantage_abs": (advantages.abs() * mask).sum() / mask.sum().clamp(min=1)}
    if kl is not None:
        stats["kl"] = kl.sum() / mask.sum().clamp(min=1)
    return advantages, stats


def policy_loss(model, micro: dict, s: PGOptions, temperature: float, weight) -> tuple[torch.Tensor, dict]:
    """The clipped-surrogate (+ KL) loss of one micro-batch, scaled by `weight` (its share of the minibatch),
    and its diagnostics."""
    mask = micro["response_mask"]
    lp = compute_logprobs(model, micro, temperature=temperature, with_entropy=True)
    old = micro["old_logprobs"] if "old_logprobs" in micro else lp.logprobs.detach()
    is_weights = None
    if s.tis_cap > 0 and "sampler_logprobs" in micro:
        is_weights = truncated_is_weights(old, micro["sampler_logprobs"], cap=s.tis_cap)
    per_token, clipped = clipped_policy_loss(lp.logprobs, old, micro["advantages"], clip_eps=s.clip_eps,
                                             clip_eps_high=s.clip_eps_high, is_weights=is_weights)
    stats = {}
    if "ref_logprobs" in micro:
        kl = kl_estimate(lp.logprobs, micro["ref_logprobs"], kind=s.kl_estimator)  # (B, T)
        stats["kl"] = aggregate(kl.detach(), mask, mode="token_mean")
        if s.kl_in == "loss":
            per_token = per_token + s.kl_coef * kl
    token_mean = s.aggregate == "token_mean"
    loss = aggregate(per_token, mask, mode=s.aggregate, constant=s.aggregate_constant,
                     num_tokens=weight if token_mean else None)
    loss = loss if token_mean else loss * weight
    stats.update(entropy=aggregate(lp.entropy.detach(), mask, mode="token_mean"),
                 clip_frac=aggregate(clipped.float(), mask, mode="token_mean"),
                 approx_kl=aggregate(approx_kl(lp.logprobs, old), mask, mode="token_mean"))
    if is_weights is not None:
        stats["is_weight"] = aggregate(is_weights, mask, mode="token_mean")
    return loss, stats


def update(cfg: PGConfig, s: PGOptions, model, optimizer, accelerator, exp: Experience, step: int) -> dict:
    """# 4. epochs x minibatches optimizer steps on the step's experience; mean diagnostics (tensors)."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    totals, n_updates = {}, 0
    for _ in range(s.epochs):
        for mb in minibatches(exp, s.minibatches, generator=gen if s.minibatches > 1 else None):
            mb = to_device(mb, accelerator.device)
            n_tokens, n_rows = mb["response_mask"].sum(), mb["response_mask"].shape[0]
            stats_sum: dict[str, torch.Tensor] = {}
            for micro in micro_batches(mb, cfg.optim.grad_accum):
                rows = micro["response_mask"].shape[0]
                weight = n_tokens.clamp(min=1) if s.aggregate == "token_mean" else rows / n_rows
                with accelerator.autocast():
                    loss, stats = policy_loss(model, micro, s, cfg.rollout.temperature, weight)
                accelerator.backward(loss)
                for k, v in {"loss": loss.detach(), **stats}.items():
                    stats_sum[k] = stats_sum.get(k, 0) + v.detach().float() * (1 if k == "loss" else rows / n_rows)
            stats_sum["grad_norm"] = clip_grad(model, cfg.optim.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for k, v in stats_sum.items():
                totals[k] = totals.get(k, 0) + v
            n_updates += 1
    return {k: v / n_updates for k, v in totals.items()}


def evaluate(engine, reward, prompts, cfg: PGConfig) -> float:
    """Mean score of greedy completions of the held-out prompts."""
    rollouts, columns = sample(engine, prompts, range(len(prompts)), sampling_of(cfg.rollout, temperature=0), 1)
    return score(reward, rollouts, columns).mean().item()


# ---------------------------------------------------------------- the loop


def setup(cfg: PGConfig, s: PGOptions) -> SimpleNamespace:
    """Run directory, prompts (every data error surfaces here, before a model loads), reward, models: the
    record the loop works with."""
    accelerator = make_accelerator(cfg.model.mixed_precision)
    run = RunDir(cfg.log.output_dir, tensorboard=cfg.log.tensorboard, wandb=cfg.log.wandb,
                 enabled=accelerator.is_main_process)
    ckpt = resume_point(run, cfg.resume)
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    prompts = load_prompts(cfg.data, tokenizer, max_prompt_length=cfg.rollout.max_prompt_length)
    train_idx, eval_idx = train_eval_split(list(range(len(prompts))), cfg.data.eval_fraction, seed=cfg.seed)
    reward = build_reward(cfg.reward)
    run.save_config(cfg)
    log.info("pg settings (%s preset + your overrides): %s", s.advantage, dataclasses.asdict(s))
    model = disable_dropout(model_from_config(cfg.model, tokenizer=tokenizer))  # old and new log-probs agree
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim)
    model, optimizer = accelerator.prepare(model, optimizer)
    reference = make_reference(unwrap(accelerator, model), s, accelerator.autocast)  # before any resume
    engine = make_engine(unwrap(accelerator, model), tokenizer, backend=cfg.rollout.backend, dtype=cfg.rollout.dtype)
    return SimpleNamespace(accelerator=accelerator, run=run, ckpt=ckpt, tokenizer=tokenizer, reward=reward,
                           prompts=prompts.subset(train_idx), held=prompts.subset(eval_idx), model=model,
                           optimizer=optimizer, scheduler=scheduler, reference=reference, engine=engine)


def step_metrics(exp: Experience, adv_stats: dict, stats: dict, s: PGOptions, dropped: int, gold: bool) -> dict:
    """The step's scalar metrics (tensors; the update's KL, at the current policy, wins over the reward's)."""
    out = {**rollout_metrics(exp), **adv_stats, **stats}
    if gold:
        out["gold"] = exp.scores.mean()
    if s.dynamic_sampling:
        out["dropped_groups"] = torch.tensor(float(dropped))
    return out


def main(cfg: PGConfig) -> dict:
    """Train; return the last logged metrics. Writes the run directory described in docs/runs.md."""
    s = cfg.settings
    x = setup(cfg, s)
    acc, model, run = x.accelerator, x.model, x.run
    state: dict = {"step": 0}
    if x.ckpt is not None:
        state = load_checkpoint(x.ckpt, model=unwrap(acc, model), optimizer=x.optimizer, scheduler=x.scheduler)
        run.truncate_metrics(state["step"])
    elif len(x.held):
        run.log(0, {"eval_score": evaluate(x.engine, x.reward, x.held, cfg)})
    order = PromptSampler(len(x.prompts), seed=cfg.seed, state=state.get("prompts"))
    gold = all("alignlab.lab.rewards:" in spec for spec in cfg.reward.sources)  # the score is the lab's gold
    guard, meter = FiniteGuard(), Meter(acc.device, state.get("meter"))
    progress = Progress(cfg.optim.max_steps, initial=state["step"], enabled=cfg.log.progress and run.enabled)
    metrics, stopping, sum_all = {}, False, process_sum(acc)
    model.train()
    with StopSignal() as stop:
        while state["step"] < cfg.optim.max_steps:
            step = state["step"] + 1
            # 1. sample  2. score (+ old log-probs when not fully on-policy, reference log-probs when KL)
            x.engine.sync_weights(unwrap(acc, model))
            exp, dropped = sample_step(cfg, s, x.engine, x.reward, x.prompts, order, step,
                                       policy=unwrap(acc, model) if needs_old_logprobs(s) else None,
                                       reference=x.reference, autocast=acc.autocast,
                                       shard=(acc.process_index, acc.num_processes), pad_id=x.tokenizer.pad_token_id)
            # 3. advantages
            exp.tensors["advantages"], adv_stats = compute_advantages(exp, s, cfg.rollout.max_new_tokens, sum_all)
            # 4. epochs x minibatches of clipped-surrogate updates
            stats = update(cfg, s, model, x.optimizer, acc, exp, step)
            lr = x.scheduler.get_last_lr()[0]  # the rate this step used
            x.scheduler.step()
            state["step"], state["prompts"] = step, order.state_dict()
            # 5. log / checkpoint: the only places that wait for the device
            guard.record(step, stats["loss"], sorted({x.prompts.rows[i] for i in exp.prompt_index}))
            values = step_metrics(exp, adv_stats, stats, s, dropped, gold)
            meter.add({k: v.to(acc.device) for k, v in values.items()}, tokens=int(exp.lengths.sum()))
            progress.update(step, tokens=int(exp.lengths.sum()))
            if due(step, cfg.rollout.sample_every):
                mean_advantage = exp.tensors["advantages"].sum(-1) / exp.lengths.clamp(min=1)
                write_samples(run, step, exp, extra={"advantage": mean_advantage})
            stopping = stop.requested  # read once: a later signal is handled after the next step
            metrics = log_and_save(cfg, x, state, step, stopping, guard, meter, progress, lr, metrics)
            if stopping:
                log.info("stop requested: saved step %d, exiting", step)
                break
    progress.close()
    if run.enabled and not stopping:
        save_model(unwrap(acc, model), x.tokenizer, run.path)
    run.close()
    return metrics


def log_and_save(cfg: PGConfig, x: SimpleNamespace, state: dict, step: int, stopping: bool, guard, meter, progress,
                 lr: float, metrics: dict) -> dict:
    """# 5. metrics at log_every, held-out greedy score at eval_every, checkpoints at save_every."""
    done = step >= cfg.optim.max_steps or stopping
    if due(step, cfg.log.log_every, done):
        guard.check()
        metrics = {"step": step, **meter.flush(), "lr": lr}
        progress.set_loss(metrics["loss"])
    if len(x.held) and due(step, cfg.log.eval_every, done):
        metrics = {**metrics, "step": step, "eval_score": evaluate(x.engine, x.reward, x.held, cfg)}
    if metrics.get("step") == step:
        x.run.log(step, metrics)
    if due(step, cfg.log.save_every, done):
        save_step(x.run, step, guard=guard, meter=meter, state=state, write=x.run.enabled,
                  keep=cfg.log.keep_checkpoints, model=unwrap(x.accelerator, x.model), tokenizer=x.tokenizer,
                  optimizer=x.optimizer, scheduler=x.scheduler)
    return metrics
