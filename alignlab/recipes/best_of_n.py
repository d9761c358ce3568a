"""Best-of-n sampling, and RAFT: iterated best-of-n with SFT on the winners.

Run:
    alignlab bon --model lab:tiny --dataset lab:sentiment-prompts --reward.sources lab:sentiment-gold \\
        --bon.n 16 --bon.max-prompts 256 --output-dir runs/bon
    alignlab bon --config examples/bon.yaml --bon.eval-reward lab:sentiment-gold   # proxy selects, gold judges
    alignlab bon --config examples/bon.yaml --bon.iterations 3 --max-steps 50      # RAFT

Best-of-n (Stiennon et al. 2020, arXiv 2009.01325; Nakano et al. 2021, arXiv 2112.09332; Gao et al. 2022,
arXiv 2210.10760 §2): sample n completions per prompt, score them with the reward source, keep the best.
Its KL from the sampling policy is log n - (n-1)/n. From the same samples we report the unbiased best-of-k
curve for k = 1, 2, 4, ..., n (order statistics), for the reward and for `bon.eval_reward`.

RAFT (Dong et al. 2023, "RAFT: Reward rAnked FineTuning", arXiv 2304.06767, Algorithm 1): each iteration
1. samples n completions per prompt from the current policy, 2. scores them, 3. keeps each prompt's best
(optionally only the top fraction of those winners in the batch, or those above a reward threshold), and
4. fine-tunes the policy on the winners with `alignlab sft`; the next iteration samples from the new policy.

Departures from the papers:
- `bon.iterations` counts sampling rounds; SFT runs between rounds, so K rounds train K-1 times and the last
  round measures (and best-of-n-selects from) the final policy. K = 1 is plain best-of-n, no training.
- RAFT's batch of prompts per stage: with `bon.max_prompts` set, round k takes the next `max_prompts` prompts
  of the dataset (wrapping around); without it every round uses every prompt.
- Each SFT round continues from the previous policy with a fresh optimizer (as Dong 2023 fine-tune per stage).
- Prompts are loaded as for PPO/GRPO (`rollout.experience.load_prompts`): chat prompts rendered with the
  template, prompts longer than `data.max_prompt_length` keep their last tokens. best.jsonl holds the prompt
  text exactly as the policy continued it, so RAFT's SFT trains on the very context it sampled from.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig
from alignlab.errors import ConfigError
from alignlab.eval.best_of_n import best_of_k_curve, bon_kl, select_best
from alignlab.models import load_model, load_tokenizer, save_model
from alignlab.rewards import RewardSource, RewardSourceConfig, build_reward, checked_scores, source_name
from alignlab.rollout import BACKENDS, Rollouts, Sampling, make_engine
from alignlab.rollout.experience import PromptSet, load_prompts, sample
from alignlab.runtime import Progress, RunDir, StopSignal, make_accelerator, resume_point, seed_everything

log = logging.getLogger("alignlab")

SCHEMA_KEYS = frozenset({
    "prompt", "completion", "score", "eval_score", "label", "chosen", "rejected", "completions", "ranks", "scores",
    "messages", "conversations", "instruction", "output", "question", "response", "info", "summaries", "choice",
    "history", "human_ref_A", "human_ref_B",
})
"""Dataset columns renamed `source_<name>` in best.jsonl, so the file still reads as prompt/completion data."""


@dataclass
class BoNOptions:
    """Best-of-n and RAFT settings."""

    n: int = 16
    """Completions sampled per prompt; the best one by the reward is kept."""
    max_prompts: int | None = None
    """Prompts per round (default: every prompt of the dataset)."""
    max_new_tokens: int = 48
    """Longest sampled completion, in tokens."""
    temperature: float = 1.0
    """Sampling temperature (> 0: best-of-n of greedy samples would pick among copies)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 0
    """Sample among the k most likely tokens only (0 = off)."""
    eval_reward: list[str] = field(default_factory=list)
    """Reward source specs scored on every sample for evaluation only (e.g. the gold reward); summed."""
    save_samples: bool = True
    """Also write samples.jsonl with all n completions per prompt and their scores."""
    iterations: int = 1
    """Sampling rounds; 1 is plain best-of-n, K > 1 is RAFT (SFT on the winners between rounds)."""
    top_fraction: float = 1.0
    """Keep only this top share of the per-prompt winners of a round, ranked by score (Dong 2023)."""
    min_score: float | None = None
    """Keep only winners scoring at least this (default: keep all)."""
    backend: str = "auto"
    """Generation engine: `auto` (fastest available) or `hf`."""
    generation_batch_size: int = 64
    """Sequences generated together."""

    def __post_init__(self):
        for name in ("n", "iterations", "max_new_tokens", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"bon.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError(f"bon.max_prompts must be >= 1 (or unset for every prompt), got {self.max_prompts}")
        if self.temperature <= 0:
            raise ConfigError(f"bon.temperature must be > 0 (best-of-n needs distinct samples), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"bon.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"bon.top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_fraction <= 1:
            raise ConfigError(f"bon.top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"bon.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")

    @property
    def sampling(self) -> Sampling:
        return Sampling(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                        top_k=self.top_k)


@dataclass
class BoNConfig:
    """Best-of-n sampling against a reward source; with `bon.iterations` > 1, RAFT."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="lab:sentiment-prompts", eval_fraction=0.0))
    """Prompt dataset; `max_length`, `packing` and `eval_fraction` apply to the RAFT SFT rounds."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer of each RAFT SFT round (`max_steps` per round); unused when bon.iterations is 1."""
    log: LogConfig = field(default_factory=LogConfig)
    reward: RewardSourceConfig = field(default_factory=RewardSourceConfig)
    """The reward that selects the best sample."""
    bon: BoNOptions = field(default_factory=BoNOptions)
    seed: int = 0
    """Seed for sampling and the SFT rounds."""


# ---------------------------------------------------------------- prompts


def round_indices(num_prompts: int, max_prompts: int | None, iteration: int) -> list[int]:
    """Round `iteration`'s prompts (0-based): the next `max_prompts` of the dataset, wrapping around."""
    if max_prompts is None or max_prompts >= num_prompts:
        return list(range(num_prompts))
    start = iteration * max_prompts
    return [(start + j) % num_prompts for j in range(max_prompts)]


# ---------------------------------------------------------------- one round


@dataclass
class Samples:
    """One round's P x n samples, prompt-major (row i*n + j is prompt i's j-th sample)."""

    prompts: list[str]  # (B,) prompt text exactly as the policy continued it
    rows: list[int]  # (B,) dataset row of each sample's prompt
    completions: list[str]  # (B,)
    columns: dict[str, list]  # column -> (B,) the prompt rows' other fields, repeated per sample
    finished: torch.Tensor  # (B,) bool: stopped at EOS
    lengths: torch.Tensor  # (B,) completion tokens
    n: int


def generate(engine, prompts: PromptSet, indices: list[int], cfg: BoNConfig, iteration: int) -> Samples:
    """n samples of each prompt in `indices`, generated in chunks of whole prompts, seeded by (seed, round)."""
    n = cfg.bon.n
    per_call = max(1, cfg.bon.generation_batch_size // n)
    chunks = [indices[i:i + per_call] for i in range(0, len(indices), per_call)]
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + iteration)
    seeds = torch.randint(2**31 - 1, (len(chunks),), generator=generator).tolist()
    parts: list[tuple[Rollouts, dict]] = []
    with Progress(len(indices), enabled=cfg.log.progress, desc=f"sample round {iteration + 1}") as bar:
        for done, (chunk, seed) in enumerate(zip(chunks, seeds)):
            parts.append(sample(engine, prompts, chunk, cfg.bon.sampling, n, seed=seed))
            bar.update(min((done + 1) * per_call, len(indices)))
    return Samples(prompts=[t for r, _ in parts for t in r.prompts],
                   rows=[prompts.rows[i] for i in indices for _ in range(n)],
                   completions=[c for r, _ in parts for c in r.completions],
                   columns={k: [v for _, cols in parts for v in cols[k]] for k in prompts.columns},
                   finished=torch.cat([r.finished for r, _ in parts]),
                   lengths=torch.cat([r.response_mask.sum(1) for r, _ in parts]), n=n)


def score(source: RewardSource, samples: Samples, what: str) -> torch.Tensor:
    """(B,) scores; a wrong shape or a non-finite score is a RewardError naming the source and the sample."""
    return checked_scores(source, samples.prompts, samples.completions, name=f"{what} {source_name(source)!r}",
                          **samples.columns)


def keep_winners(best: torch.Tensor, scores: torch.Tensor, opts: BoNOptions) -> torch.Tensor:
    """The winners (flat sample indices) kept for best.jsonl / SFT: the top `top_fraction` by score (ties ->
    earlier prompt), then only those scoring at least `min_score`. Returned in prompt order."""
    kept = best
    if opts.top_fraction < 1:
        count = max(1, math.ceil(opts.top_fraction * len(best)))
        order = torch.sort(scores[best], descending=True, stable=True).indices[:count]
        kept = best[order.sort().values]
    if opts.min_score is not None:
        kept = kept[scores[kept] >= opts.min_score]
    return kept


def round_metrics(samples: Samples, scores, evals, best, kept, n: int) -> dict[str, float]:
    """Mean scores of all samples, of the best per prompt and of the kept winners; KL; best-of-k curves."""
    grouped = scores.view(-1, n)  # (P, n)
    metrics = {
        "score/mean": scores.mean(), "score/best": scores[best].mean(),
        "kept": len(kept),
        "kl_bon": bon_kl(n), "prompts": grouped.shape[0],
        "finished": samples.finished.float().mean(),
        "completion_tokens": samples.lengths.float().mean(),
    }
    if len(kept):
        metrics["score/kept"] = scores[kept].mean()
    metrics |= {f"score/best_of_{k}": v for k, v in best_of_k_curve(grouped).items()}
    if evals is not None:
        metrics |= {"eval/mean": evals.mean(), "eval/best": evals[best].mean()}
        if len(kept):
            metrics["eval/kept"] = evals[kept].mean()
        metrics |= {f"eval/best_of_{k}": v for k, v in best_of_k_curve(grouped, evals.view(-1, n)).items()}
    return {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}


# ---------------------------------------------------------------- files


def sft_row(prompt, completion: str, extra: dict[str, Any], **scores: float) -> dict:
    """A best.jsonl row `alignlab sft` reads as prompt/completion data; clashing columns become `source_*`."""
    row = {"prompt": prompt, "completion": completion, **scores}
    for key, value in extra.items():
        row[f"source_{key}" if key in SCHEMA_KEYS else key] = value
    return row


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def write_round(out: Path, samples: Samples, scores, evals, best, kept, save_samples: bool) -> Path:
    """best.jsonl (the kept winners, prompt order) and, when asked, samples.jsonl (every sample)."""
    n = samples.n

    def extras(i: int) -> dict:
        return {"eval_score": float(evals[i])} if evals is not None else {}

    def columns(i: int) -> dict:
        return {k: v[i] for k, v in samples.columns.items()}

    winners = [sft_row(samples.prompts[i], samples.completions[i], columns(i), score=float(scores[i]), **extras(i))
               for i in kept.tolist()]
    best_path = write_jsonl(out / "best.jsonl", winners)
    if save_samples:
        is_best = set(best.tolist())
        write_jsonl(out / "samples.jsonl", [
            {"prompt_index": i // n, "sample": i % n, "row": samples.rows[i], "prompt": samples.prompts[i],
             "completion": samples.completions[i], "score": float(scores[i]), **extras(i),
             "finished": bool(samples.finished[i]), "best": i in is_best}
            for i in range(len(samples.completions))])
    return best_path


# ---------------------------------------------------------------- RAFT


def sft_config(cfg: BoNConfig, policy_path: str, best_path: Path, out: Path, iteration: int):
    """The `alignlab sft` run on one round's winners: this run's model/optim blocks, the winners as data."""
    from alignlab.recipes.sft import SFTConfig

    data = dataclasses.replace(cfg.data, dataset=str(best_path), split="train", subset=None, columns={},
                               max_rows=None)
    log_cfg = LogConfig(output_dir=str(out), log_every=cfg.log.log_every, eval_every=cfg.log.eval_every,
                        save_every=0, keep_checkpoints=1, tensorboard=cfg.log.tensorboard, wandb=False,
                        progress=cfg.log.progress)
    return SFTConfig(model=dataclasses.replace(cfg.model, path=policy_path), data=data, optim=cfg.optim,
                     log=log_cfg, seed=cfg.seed + iteration + 1)


def train_on_winners(cfg: BoNConfig, policy_path: str, best_path: Path, out: Path, iteration: int) -> bool:
    """SFT the policy on the winners into `out`; False when the SFT run was stopped by a signal (no model)."""
    from alignlab.recipes import sft

    sft.main(sft_config(cfg, policy_path, best_path, out, iteration))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # RAFT does not resume mid-round: keep the model only
    return (out / "config.json").exists()


# ---------------------------------------------------------------- the loop


def run_round(iteration: int, policy, tokenizer, prompts: PromptSet, reward: RewardSource,
              eval_source: RewardSource | None, cfg: BoNConfig, out: Path) -> tuple[dict, Path]:
    """One best-of-n round: sample, score, select, write. Returns its metrics and the best.jsonl path."""
    n = cfg.bon.n
    # 1. sample n completions per prompt from the current policy
    engine = make_engine(policy, tokenizer, backend=cfg.bon.backend, batch_size=cfg.bon.generation_batch_size)
    samples = generate(engine, prompts, round_indices(len(prompts), cfg.bon.max_prompts, iteration), cfg,
                       iteration)
    # 2. score every sample; the eval reward (e.g. gold) only measures, it never selects
    scores = score(reward, samples, "the reward")
    evals = score(eval_source, samples, "bon.eval_reward") if eval_source is not None else None
    # 3. keep each prompt's best (ties -> first sample), then RAFT's optional filters over the round
    best = select_best(scores, n)  # (P,)
    kept = keep_winners(best, scores, cfg.bon)
    # 4. write the winners (SFT data) and every sample
    out.mkdir(parents=True, exist_ok=True)
    best_path = write_round(out, samples, scores, evals, best, kept, cfg.bon.save_samples)
    return round_metrics(samples, scores, evals, best, kept, n), best_path


def free_memory() -> None:
    """Return the memory of dropped models (call after the last reference is gone)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def summary(iteration: int, metrics: dict) -> str:
    line = (f"round {iteration}: {metrics['prompts']} prompts x {metrics.get('n', '')} samples, "
            f"score mean {metrics['score/mean']:.4f} best {metrics['score/best']:.4f}, KL_bon "
            f"{metrics['kl_bon']:.3f}, kept {metrics['kept']}")
    if "eval/best" in metrics:
        line += f"; eval reward mean {metrics['eval/mean']:.4f} best {metrics['eval/best']:.4f}"
    return line


def rounds_loop(cfg: BoNConfig, run: RunDir, device) -> dict:
    """Load everything, then run the rounds (SFT between them); return the last round's metrics."""
    resume_point(run, False)  # refuse a directory that already holds a run
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    limit = cfg.data.max_prompt_length or min(tokenizer.model_max_length, 10**6)
    prompts = load_prompts(cfg.data, tokenizer, max_prompt_length=limit)
    reward = build_reward(cfg.reward)
    eval_source = build_reward(RewardSourceConfig(sources=cfg.bon.eval_reward)) if cfg.bon.eval_reward else None
    run.save_config(cfg)
    load = dict(dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
    policy_path, rounds = cfg.model.path, cfg.bon.iterations
    policy = load_model(policy_path, **load).to(device)
    history: list[dict] = []
    with StopSignal() as stop:
        for it in range(rounds):
            out = run.path if rounds == 1 else run.path / f"iter-{it + 1}"
            metrics, best_path = run_round(it, policy, tokenizer, prompts, reward, eval_source, cfg, out)
            metrics = {"n": cfg.bon.n, **metrics}
            history.append(run.log(it + 1, metrics))
            log.info(summary(it + 1, metrics))
            if rounds > 1:
                (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            if it == rounds - 1 or stop.requested:
                break
            # 5. RAFT: fine-tune the policy on the winners; the next round samples from the new policy
            if metrics["kept"] == 0:
                log.warning("round %d kept no winners (bon.min_score=%s): the policy is not trained this round",
                            it + 1, cfg.bon.min_score)
                continue
            policy = None  # the SFT run loads its own copy
            free_memory()
            if not train_on_winners(cfg, policy_path, best_path, out / "sft", it):
                log.info("stop requested during SFT of round %d: exiting", it + 1)
                break
            policy_path = str(out / "sft")
            tokenizer = load_tokenizer(policy_path, trust_remote_code=cfg.model.trust_remote_code)
            policy = load_model(policy_path, **load).to(device)
    if policy_path != cfg.model.path:  # the final RAFT policy, loadable by plain transformers
        save_model(policy if policy is not None else load_model(policy_path, **load), tokenizer, run.path)
    (run.path / "metrics.json").write_text(json.dumps({**history[-1], "rounds": history}, indent=2) + "\n")
    return history[-1]


def main(cfg: BoNConfig) -> dict:
    """Best-of-n (and RAFT rounds); return the last round's metrics. Writes the run directory in docs/best-of-n.md."""
    accelerator = make_accelerator(cfg.model.mixed_precision)
    if accelerator.num_processes > 1:
        raise ConfigError("alignlab bon runs in one process (generation is batched within it); launch it without "
                          "torchrun/accelerate")
    run = RunDir(cfg.log.output_dir, tensorboard=cfg.log.tensorboard, wandb=cfg.log.wandb)
    try:
        return rounds_loop(cfg, run, accelerator.device)
    finally:
        run.close()

