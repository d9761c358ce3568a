"""PPO for language models (RLHF): a policy and a critic, the score plus a per-token KL penalty as the reward.

Run:
    alignlab ppo --model runs/sft --reward.sources rm:runs/rm --ppo.critic-path runs/rm --output-dir runs/ppo
    alignlab ppo --model lab:tiny --dataset lab:sentiment-prompts --reward.sources lab:sentiment-gold \
        --ppo.kl-target 3 --max-steps 100
    alignlab ppo --config examples/ppo.yaml --ppo.critic head

Each step (Ouyang et al. 2022, arXiv:2203.02155, §3.5; Ziegler et al. 2019, arXiv:1909.08593, §2.2):
  1. sample: P prompts x G completions from the current policy (`rollout.experience.collect`)
  2. score: reward source -> scores (optionally whitened: batch / running), EOS penalty
  3. rewards: r_t = -kl_coef * (log pi_old - log pi_ref)_t (k1), + score at the last token
  4. values: the critic's V(s_t) of every response token
  5. GAE(gamma, lambda) advantages and returns (Schulman et al. 2016, arXiv:1506.02438), advantages whitened
  6. K epochs x M minibatches: clipped surrogate + vf_coef * clipped value loss (Schulman et al. 2017,
     arXiv:1707.06347, Eq. 7 / PPO2) - entropy_coef * entropy (Eq. 9), log-probs of logits / sampling
     temperature; PPO-ptx: + ptx_coef * NLL of one pretraining batch per update (Ouyang 2022, Eq. 2)
  7. adaptive KL controller update (Ziegler 2019 §2.2)
  8. log, write samples, checkpoint
docs/ppo.md lists every implementation detail with its source (Huang et al. 2024, arXiv:2403.17031).
Departures: the learning-rate schedule steps once per rollout batch (not per minibatch update); the critic
is trained by its own AdamW (`ppo.critic_lr`) on the same summed loss, so `vf_coef` only matters for a
value head that shares the policy's backbone; PPO-ptx's pretraining data is an SFT-style dataset whose
completion tokens count (InstructGPT mixes in raw pretraining text), its loss a token mean per batch.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from alignlab.advantages import AdaptiveKLController, FixedKLController, explained_variance, gae, token_rewards, whiten
from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig, RolloutConfig
from alignlab.errors import ConfigError
from alignlab.losses import aggregate
from alignlab.losses.pg import approx_kl, clipped_policy_loss, clipped_value_loss, entropy_loss, kl_estimate, ptx_loss
from alignlab.models import compute_logprobs, load_tokenizer, model_from_config, save_model
from alignlab.models.reference import policy_reference
from alignlab.models.value import disable_dropout, logprobs_and_values, rollout_values, save_value_model
from alignlab.recipes.ppo_parts import PtxBatches, RunningMoments, build_critic
from alignlab.rewards import RewardSourceConfig, build_reward
from alignlab.rollout import make_engine
from alignlab.rollout.experience import (
    PromptSampler,
    collect,
    load_prompts,
    minibatches,
    rollout_metrics,
    sampling_of,
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
    resume_point,
    save_checkpoint,
    save_step,
    seed_everything,
    to_device,
    unwrap,
)

log = logging.getLogger("alignlab")

CRITIC_DIR = "critic"
AGGREGATES = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"]


@dataclass
class PPOOptions:
    """PPO settings: critic, KL penalty, GAE, clipping, epochs, normalizations."""

    critic: Literal["separate", "head"] = "separate"
    """`separate`: a value model of its own (from `critic_path`); `head`: a value head on the policy's backbone."""
    critic_path: str | None = None
    """Initialization of a separate critic: a reward-model dir (`alignlab rm` output; recommended) or a causal
    LM. Default: the policy's `model.path`."""
    critic_lr: float = 1e-4
    """Learning rate of the critic (the whole value model, or the value head)."""
    kl_coef: float = 0.05
    """KL penalty coefficient beta (the starting value when `kl_target` is set)."""
    kl_target: float | None = None
    """Adaptive KL controller (Ziegler 2019): target KL to the reference in nats per sequence. None = fixed beta."""
    kl_horizon: int = 10000
    """Adaptive KL controller horizon, in samples."""
    gamma: float = 1.0
    """Discount of GAE."""
    gae_lambda: float = 0.95
    """lambda of GAE (0: one-step TD, 1: Monte-Carlo)."""
    clip_eps: float = 0.2
    """Policy ratio clip range."""
    value_clip_eps: float = 0.2
    """Value clip range around the rollout-time values."""
    vf_coef: float = 0.1
    """Weight of the value loss in the summed loss (matters for the shared-backbone `head` critic)."""
    epochs: int = 4
    """PPO epochs K over each rollout batch."""
    minibatches: int = 1
    """Minibatches M per epoch: K x M optimizer updates per step."""
    whiten_advantages: bool = True
    """Whiten advantages over the batch's response tokens."""
    whiten_rewards: bool = False
    """Divide the per-token rewards by their batch std (mean kept) before GAE."""
    score_norm: Literal["none", "batch", "running"] = "none"
    """Scores as given (`none`; an `rm:` reward is already whitened with the RM's stored gain/bias), whitened
    per batch, or by running mean/std over all steps so far."""
    missing_eos_penalty: float | None = None
    """Score given to completions that never reached EOS (e.g. -1; replaces their score). None = off."""
    critic_warmup_steps: int = 0
    """First steps train only the critic (the policy is not updated)."""
    aggregate: AGGREGATES = "token_mean"
    """How per-token losses are reduced (`alignlab.losses.aggregate`)."""
    entropy_coef: float = 0.0
    """Entropy bonus c: the policy loss gets -c * entropy (PPO Eq. 9). 0 = off."""
    ptx_coef: float = 0.0
    """PPO-ptx gamma (InstructGPT Eq. 2): + gamma * NLL of a `ptx_dataset` batch per update. 0 = off."""
    ptx_dataset: str | None = None
    """SFT-style dataset (prompt/completion or chat rows; the completion tokens count) of the pretraining mix."""
    ptx_batch_size: int = 8
    """Rows of `ptx_dataset` per policy update."""

    def __post_init__(self):
        checks = ((self.critic_lr > 0, "ppo.critic_lr must be > 0"), (self.kl_coef >= 0, "ppo.kl_coef must be >= 0"),
                  (self.kl_target is None or self.kl_target > 0, "ppo.kl_target must be > 0 (or unset)"),
                  (self.kl_target is None or self.kl_coef > 0, "ppo.kl_target needs a starting ppo.kl_coef > 0"),
                  (self.kl_horizon > 0, "ppo.kl_horizon must be > 0"),
                  (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1, "ppo.gamma, ppo.gae_lambda must be in [0, 1]"),
                  (self.clip_eps > 0 and self.value_clip_eps > 0, "ppo.clip_eps and ppo.value_clip_eps must be > 0"),
                  (self.vf_coef > 0, "ppo.vf_coef must be > 0"),
                  (self.epochs >= 1 and self.minibatches >= 1, "ppo.epochs and ppo.minibatches must be >= 1"),
                  (self.critic_warmup_steps >= 0, "ppo.critic_warmup_steps must be >= 0"),
                  (self.entropy_coef >= 0 and self.ptx_coef >= 0 and self.ptx_batch_size >= 1,
                   "ppo.entropy_coef and ppo.ptx_coef must be >= 0, ppo.ptx_batch_size >= 1"),
                  ((self.ptx_coef > 0) == (self.ptx_dataset is not None),
                   "PPO-ptx needs both ppo.ptx_coef > 0 and ppo.ptx_dataset (set both, or neither)"),
                  (self.critic == "separate" or self.critic_path is None,
                   "ppo.critic_path applies to the separate critic only (ppo.critic head shares the policy)"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass
class PPOConfig:
    """Online RLHF with PPO: a policy, a critic, a frozen reference, and a reward source."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="lab:sentiment-prompts", eval_fraction=0.0))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, scheduler="linear"))
    log: LogConfig = field(default_factory=LogConfig)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(prompts_per_step=16, group_size=1))
    reward: RewardSourceConfig = field(default_factory=RewardSourceConfig)
    ppo: PPOOptions = field(default_factory=PPOOptions)
    seed: int = 0
    """Seed for prompt order, sampling and minibatch shuffling."""
    resume: bool = False
    """Continue from the newest checkpoint in the output directory."""

    def __post_init__(self):
        rows = self.rollout.prompts_per_step * self.rollout.group_size
        if self.ppo.critic_warmup_steps >= self.optim.max_steps:
            raise ConfigError(f"ppo.critic_warmup_steps ({self.ppo.critic_warmup_steps}) must be below optim.max_steps "
                              f"({self.optim.max_steps}): the policy would never train")
        if self.ppo.minibatches * self.optim.grad_accum > rows:
            raise ConfigError(f"ppo.minibatches x optim.grad_accum = {self.ppo.minibatches * self.optim.grad_accum} "
                              f"exceeds the {rows} completions per step (rollout.prompts_per_step x group_size)")


# ---------------------------------------------------------------- the step


def ppo_losses(policy, critic, head, micro: dict, cfg: PPOConfig, num_tokens, train_policy: bool) -> dict:
    """Losses (`loss` to backpropagate) and per-minibatch diagnostics of one micro-batch."""
    mask, mode = micro["response_mask"], cfg.ppo.aggregate
    kw = dict(mode=mode, num_tokens=num_tokens if mode == "token_mean" else None)
    lp, values = logprobs_and_values(policy, micro, critic=critic, head=head, temperature=cfg.rollout.temperature,
                                     grad=train_policy)
    pg_token, clipped = clipped_policy_loss(lp.logprobs, micro["old_logprobs"], micro["advantages"],
                                            clip_eps=cfg.ppo.clip_eps)
    if cfg.ppo.entropy_coef > 0:  # off: the loss is exactly the clipped surrogate
        pg_token = pg_token + entropy_loss(lp.entropy, entropy_coef=cfg.ppo.entropy_coef)
    vf_token = clipped_value_loss(values, micro["values"], micro["returns"], clip_eps=cfg.ppo.value_clip_eps)
    pg_loss, vf_loss = aggregate(pg_token, mask, **kw), aggregate(vf_token, mask, **kw)
    loss = cfg.ppo.vf_coef * vf_loss + (pg_loss if train_policy else 0.0)
    moved = (values - micro["values"]).abs() > cfg.ppo.value_clip_eps
    diag = {"pg_loss": pg_loss, "vf_loss": vf_loss, "clipfrac": aggregate(clipped.float(), mask, **kw),
            "vf_clipfrac": aggregate(moved.float(), mask, **kw), "entropy": aggregate(lp.entropy.detach(), mask, **kw),
            "approx_kl": aggregate(approx_kl(lp.logprobs, micro["old_logprobs"]), mask, **kw)}
    return {"loss": loss, **{k: v.detach() for k, v in diag.items()}}


def shape_rewards(exp, cfg: PPOConfig, running: RunningMoments | None, kl_coef: float) -> dict:
    """Steps 2-3: normalized, EOS-penalized scores and the KL-shaped per-token rewards (CPU tensors)."""
    mask, scores = exp.response_mask, exp.scores
    if cfg.ppo.score_norm == "batch":
        scores = whiten(scores)
    elif cfg.ppo.score_norm == "running":
        scores = running.normalize(scores)
    if cfg.ppo.missing_eos_penalty is not None:
        scores = torch.where(exp.rollouts.finished, scores, cfg.ppo.missing_eos_penalty)
    kl = torch.where(mask, kl_estimate(exp.old_logprobs, exp.ref_logprobs, kind="k1"), 0.0)  # (B, T)
    rewards = token_rewards(scores, mask, kl=kl, kl_coef=kl_coef)
    if cfg.ppo.whiten_rewards:  # rescale only, the mean stays (lm-human-preferences `whiten_rewards`)
        rewards = whiten(rewards, mask, shift_mean=False)
    return {"scores": scores, "kl": kl, "rewards": rewards}


def ptx_backward(policy, ptx: PtxBatches, cfg: PPOConfig, accelerator) -> torch.Tensor:
    """PPO-ptx: backpropagate ptx_coef * token-mean NLL of the next pretraining batch (at temperature 1: the
    likelihood of the data under the policy itself); returns the NLL, detached."""
    batch = to_device(ptx.next(), accelerator.device)
    with accelerator.autocast():
        lp = compute_logprobs(policy, batch)
        loss = aggregate(ptx_loss(lp.logprobs, ptx_coef=cfg.ppo.ptx_coef), batch["response_mask"], mode="token_mean")
    accelerator.backward(loss)
    return loss.detach().float() / cfg.ppo.ptx_coef


def update(policy, critic, head, optimizers, exp, cfg: PPOConfig, step: int, accelerator, train_policy: bool,
           ptx: PtxBatches | None = None) -> dict:
    """Step 6: K epochs x M minibatches of clipped PPO updates (+ a PPO-ptx batch each, when on); mean
    diagnostics over the updates."""
    device, sums, n = accelerator.device, {}, 0
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    critic_params = list((critic if critic is not None else head).parameters())
    for _ in range(cfg.ppo.epochs):
        for mb in minibatches(exp, cfg.ppo.minibatches, generator=gen):
            num_tokens = mb["response_mask"].sum().to(device)
            for micro in micro_batches(mb, cfg.optim.grad_accum):
                micro = to_device(micro, device)
                with accelerator.autocast():
                    out = ppo_losses(policy, critic, head, micro, cfg, num_tokens, train_policy)
                accelerator.backward(out.pop("loss") / (1 if cfg.ppo.aggregate == "token_mean" else
                                                        cfg.optim.grad_accum))
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v.float() / cfg.optim.grad_accum
            if ptx is not None and train_policy:
                sums["ptx_nll"] = sums.get("ptx_nll", 0.0) + ptx_backward(policy, ptx, cfg, accelerator)
            norms = {"critic_grad_norm": clip_grad(critic_params, cfg.optim.max_grad_norm),
                     **({"policy_grad_norm": clip_grad(policy, cfg.optim.max_grad_norm)} if train_policy else {})}
            for k, v in norms.items():
                sums[k] = sums.get(k, 0.0) + v.float()
            for name, opt in optimizers.items():
                if name == "critic" or train_policy:
                    opt.step()
                opt.zero_grad(set_to_none=True)
            n += 1
    return {k: v / n for k, v in sums.items()}


def ppo_step(models, optimizers, schedulers, exp, cfg: PPOConfig, state: dict, accelerator, ptx=None) -> dict:
    """Steps 2-7 on a collected experience; returns the step's metrics (tensors)."""
    policy, critic, head, controller, running = models
    # 4. values (and, with a value head, the old log-probs from the same forward)
    values, old = rollout_values(exp.rollouts.batch(), policy=policy, critic=critic, head=head,
                                 device=accelerator.device, temperature=cfg.rollout.temperature,
                                 autocast=accelerator.autocast)
    exp.old_logprobs = old if old is not None else exp.old_logprobs
    # 2-3. score normalization, EOS penalty, KL-shaped per-token rewards
    shaped = shape_rewards(exp, cfg, running, controller.value)
    mask = exp.response_mask
    # 5. GAE(gamma, lambda), advantage whitening
    advantages, returns = gae(shaped["rewards"], values, mask, gamma=cfg.ppo.gamma, gae_lambda=cfg.ppo.gae_lambda)
    if cfg.ppo.whiten_advantages:
        advantages = whiten(advantages, mask)
    exp.tensors.update(values=values, returns=returns, advantages=advantages)
    exp.tensors["seq_kl"] = shaped["kl"].sum(-1)  # (B,) for the samples file
    # 6. K epochs x M minibatches
    train_policy = state["step"] >= cfg.ppo.critic_warmup_steps
    stats = update(policy, critic, head, optimizers, exp, cfg, state["step"], accelerator, train_policy, ptx)
    lr = schedulers[0].get_last_lr()[0]  # the rate this step used; the policy's schedule starts after warm-up
    for scheduler in schedulers[0 if train_policy else 1:]:
        scheduler.step()
    # 7. KL controller: mean sequence KL of this batch, over all processes
    seq_kl = exp.tensors["seq_kl"].mean()
    if accelerator.num_processes > 1:
        seq_kl = accelerator.reduce(seq_kl.to(accelerator.device), reduction="mean").cpu()
    kl_coef, n_tokens = controller.value, mask.sum().clamp(min=1)
    controller.update(float(seq_kl), len(exp) * accelerator.num_processes)
    return {**rollout_metrics(exp), **stats, "lr": lr, "kl": seq_kl, "kl_coef": torch.tensor(kl_coef),
            "reward": (shaped["rewards"].sum(-1)).mean(), "score_normalized": shaped["scores"].mean(),
            "explained_variance": explained_variance(values, returns, mask),
            "value_mean": values.sum() / n_tokens, "return_mean": returns.sum() / n_tokens}


# ---------------------------------------------------------------- main


def setup_models(cfg: PPOConfig, tokenizer, accelerator):
    """Policy, frozen reference, critic (model or head), their optimizers/schedulers (prepared), and the
    rollout engine sampling from the policy."""
    policy = disable_dropout(model_from_config(cfg.model, tokenizer=tokenizer))
    reference = policy_reference(policy, autocast=accelerator.autocast, device=accelerator.device)
    critic, head = build_critic(cfg, policy, tokenizer)
    value_module = disable_dropout(critic if critic is not None else head)
    policy_opt = make_optimizer(policy, cfg.optim)
    critic_optim = dataclasses.replace(cfg.optim, lr=cfg.ppo.critic_lr)
    critic_opt = make_optimizer(value_module, critic_optim)
    # the policy's schedule spans the steps that train it: those after the critic warm-up
    policy_steps = dataclasses.replace(cfg.optim, max_steps=cfg.optim.max_steps - cfg.ppo.critic_warmup_steps)
    schedulers = [make_scheduler(policy_opt, policy_steps), make_scheduler(critic_opt, critic_optim)]
    policy, policy_opt, value_module, critic_opt = accelerator.prepare(policy, policy_opt, value_module, critic_opt)
    critic, head = (value_module, None) if critic is not None else (None, value_module)
    engine = make_engine(unwrap(accelerator, policy), tokenizer, backend=cfg.rollout.backend, dtype=cfg.rollout.dtype)
    return policy, reference, critic, head, {"policy": policy_opt, "critic": critic_opt}, schedulers, engine


def resume(ckpt: Path | None, run: RunDir, cfg: PPOConfig, models: tuple, optimizers: dict, schedulers: list,
           accelerator, n_prompts: int):
    """Fresh or resumed loop state: (state, KL controller, running moments or None, prompt order). Resuming loads
    the critic's checkpoint of the same step, then the policy's (with RNG)."""
    state: dict = {"step": 0}
    if ckpt is not None:
        policy, critic, head = models
        critic_ckpt = run.path / CRITIC_DIR / "checkpoints" / ckpt.name
        if not (critic_ckpt / "state.json").is_file():
            raise ConfigError(f"{ckpt} has no matching critic checkpoint {critic_ckpt}: cannot resume")
        load_checkpoint(critic_ckpt, model=unwrap(accelerator, critic if critic is not None else head),
                        optimizer=optimizers["critic"], scheduler=schedulers[1], restore_rng=False)
        state = load_checkpoint(ckpt, model=unwrap(accelerator, policy), optimizer=optimizers["policy"],
                                scheduler=schedulers[0])
        run.truncate_metrics(state["step"])
    o = cfg.ppo
    controller = (FixedKLController(o.kl_coef) if o.kl_target is None
                  else AdaptiveKLController(o.kl_coef, target=o.kl_target, horizon=o.kl_horizon))
    if "kl" in state:
        controller.load_state_dict(state["kl"])
    running = RunningMoments(state.get("running")) if cfg.ppo.score_norm == "running" else None
    return state, controller, running, PromptSampler(n_prompts, seed=cfg.seed, state=state.get("prompts"))


def save_critic(run: RunDir, step: int, models: tuple, optimizers: dict, schedulers: list, tokenizer, cfg,
                accelerator) -> None:
    """The critic's checkpoint `<run>/critic/checkpoints/step-N`, written before the policy's, whose marker makes
    step N the resume point: a crash between the two leaves the previous pair in charge. Main process only."""
    if not accelerator.is_main_process:
        return
    policy, critic, head = models
    save_checkpoint(run.path / CRITIC_DIR, step, model=unwrap(accelerator, critic if critic is not None else head),
                    tokenizer=tokenizer if critic is not None else None, optimizer=optimizers["critic"],
                    scheduler=schedulers[1], state={"step": step}, keep=cfg.log.keep_checkpoints)


def save_final(run: RunDir, models: tuple, tokenizer, accelerator) -> None:
    """The trained policy at the run's top level and the critic in `critic/`, loadable by plain transformers."""
    policy, critic, head = models
    save_model(unwrap(accelerator, policy), tokenizer, run.path)
    if critic is not None:
        save_value_model(unwrap(accelerator, critic), tokenizer, run.path / CRITIC_DIR)
    else:
        unwrap(accelerator, head).save_pretrained(run.path / CRITIC_DIR)


def main(cfg: PPOConfig) -> dict:
    """Train; return the last logged metrics. Writes the run directory (docs/runs.md) plus `critic/`."""
    accelerator = make_accelerator(cfg.model.mixed_precision)
    main_process, device = accelerator.is_main_process, accelerator.device
    run = RunDir(cfg.log.output_dir, tensorboard=cfg.log.tensorboard, wandb=cfg.log.wandb, enabled=main_process)
    ckpt = resume_point(run, cfg.resume)
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    prompts = load_prompts(cfg.data, tokenizer, max_prompt_length=cfg.rollout.max_prompt_length)
    reward = build_reward(cfg.reward)
    ptx = None if cfg.ppo.ptx_dataset is None else PtxBatches(
        cfg.ppo.ptx_dataset, tokenizer, batch_size=cfg.ppo.ptx_batch_size, max_length=cfg.data.max_length,
        seed=cfg.seed, rank=accelerator.process_index, world=accelerator.num_processes)
    run.save_config(cfg)
    policy, reference, critic, head, optimizers, schedulers, engine = setup_models(cfg, tokenizer, accelerator)
    models = (policy, critic, head)
    state, controller, running, order = resume(ckpt, run, cfg, models, optimizers, schedulers, accelerator,
                                               len(prompts))
    if ptx is not None and "ptx" in state:
        ptx.load_state_dict(state["ptx"])
    guard, meter, stopping, metrics = FiniteGuard(), Meter(device, state.get("meter")), False, {}
    progress = Progress(cfg.optim.max_steps, initial=state["step"], enabled=cfg.log.progress and main_process)

    with StopSignal() as stop:
        while state["step"] < cfg.optim.max_steps:
            guard.check()  # never sample from weights a non-finite update has spoiled
            # 1. sample (and 2. score; old and reference log-probs at the sampling temperature)
            engine.sync_weights(unwrap(accelerator, policy))
            indices = order.next(cfg.rollout.prompts_per_step, rank=accelerator.process_index,
                                 world=accelerator.num_processes)
            exp = collect(engine, reward, prompts, indices, sampling_of(cfg.rollout), group_size=cfg.rollout.group_size,
                          seed=cfg.seed * 1_000_003 + state["step"] * 101 + accelerator.process_index,
                          policy=None if head is not None else unwrap(accelerator, policy), reference=reference,
                          autocast=accelerator.autocast)
            # 2.-7. (see ppo_step)
            step_metrics = ppo_step((policy, critic, head, controller, running), optimizers, schedulers, exp, cfg,
                                    state, accelerator, ptx)
            lr = step_metrics.pop("lr")
            state["step"] = step = state["step"] + 1
            guard.record(step, step_metrics["pg_loss"] + step_metrics["vf_loss"], [prompts.rows[i] for i in indices])
            meter.add({k: v.to(device) for k, v in step_metrics.items()}, tokens=int(exp.lengths.sum()))
            progress.update(step)

            # 8. log, samples, checkpoint
            done = (stopping := stop.requested) or step >= cfg.optim.max_steps
            if due(step, cfg.log.log_every, done):
                guard.check()
                metrics = {"step": step, **meter.flush(), "lr": lr}
                progress.set_loss(metrics["score"])
                run.log(step, metrics)
            if main_process and due(step, cfg.rollout.sample_every, done) and cfg.rollout.sample_every:
                write_samples(run, step, exp, extra={"kl": exp.tensors["seq_kl"]})
            if due(step, cfg.log.save_every, done):
                state.update(prompts=order.state_dict(), kl=controller.state_dict(),
                             **({"running": running.state_dict()} if running is not None else {}),
                             **({"ptx": ptx.state_dict()} if ptx is not None else {}))
                critic_first = [lambda step=step: save_critic(run, step, models, optimizers, schedulers, tokenizer,
                                                              cfg, accelerator)]
                save_step(run, step, guard=guard, meter=meter, state=state, write=main_process,
                          keep=cfg.log.keep_checkpoints, prepare=critic_first, model=unwrap(accelerator, policy),
                          tokenizer=tokenizer, optimizer=optimizers["policy"], scheduler=schedulers[0])
            if stopping:
                log.info("stop requested: saved step %d, exiting", step)
                break
    progress.close()
    if main_process and not stopping:
        save_final(run, models, tokenizer, accelerator)
    run.close()
    return metrics
