"""The experience step every online-RL recipe shares: prompts -> rollouts -> scores -> old/reference log-probs.

    prompts = load_prompts(cfg.data, tokenizer, max_prompt_length=cfg.rollout.max_prompt_length)
    order = PromptSampler(len(prompts), seed=cfg.seed)         # order.state_dict() goes into checkpoints
    exp = collect(make_engine(policy, tokenizer), reward, prompts, order.next(P), sampling_of(cfg.rollout),
                  group_size=G, seed=s, policy=policy_or_None, reference=reference_or_None)
    exp.tensors["advantages"] = ...                            # per-row tensors ride along
    for mb in minibatches(exp, n, generator=g): ...            # dicts of (rows, ...) tensors
    write_samples(run, step, exp)                              # run_dir/samples/step-N.jsonl

Rows are prompt-major: rows i*G .. i*G+G-1 are the G samples of the batch's i-th prompt (B = P*G). Tensors
stay on the CPU, as the engine returns them (the recipe moves minibatches with `to_device`). Log-probs are
those of softmax(logits / T), T the sampling temperature, for policy and reference alike. Old log-probs are
optional: a fully on-policy update (one epoch, one minibatch) passes `policy=None` and uses current.detach().
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import Tensor

from alignlab.data import normalize, read_rows, tokenize_prompts
from alignlab.models.logprobs import compute_logprobs
from alignlab.rewards.base import RewardSource, checked_scores
from alignlab.rollout.base import Rollouts, Sampling

log = logging.getLogger("alignlab")


@dataclass
class PromptSet:
    """A prompt dataset ready for generation: rendered text, token ids, and every other column."""

    texts: list[str]  # (N,) prompt text as the engine receives it (chat prompts rendered with the template)
    prompt_ids: list[list[int]]  # (N,) token ids after truncation (BOS included when the tokenizer adds one)
    columns: dict[str, list]  # column -> (N,) values: the dataset's other fields (e.g. GSM8K `answer`)
    rows: list[int]  # (N,) dataset row of each prompt, for messages
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> PromptSet:
        """The prompts at `indices` (e.g. a held-out split), in that order."""
        return PromptSet([self.texts[i] for i in indices], [self.prompt_ids[i] for i in indices],
                         {k: [v[i] for i in indices] for k, v in self.columns.items()},
                         [self.rows[i] for i in indices], self.source)


def load_prompts(data, tokenizer, *, max_prompt_length: int) -> PromptSet:
    """Read a prompt dataset (`data`: a DataConfig; any schema with a prompt, GSM8K and TRL prompt rows as they
    are), keep its other columns for reward functions, render chat prompts with the template, and keep the
    last `max_prompt_length` tokens of longer prompts (BOS kept in front)."""
    rows = read_rows(data.dataset, split=data.split, subset=data.subset, max_rows=data.max_rows)
    examples = normalize(rows, "prompt", columns=data.columns or None)
    features, report = tokenize_prompts(examples, tokenizer, max_prompt_length=max_prompt_length)
    log.info("prompts: %d from %s, %d truncated to their last %d tokens", len(features), report.source,
             report.prompt_truncated, max_prompt_length)
    texts, bos = [], getattr(tokenizer, "bos_token_id", None)
    for ex, ids in zip(examples, (f["prompt_ids"] for f in features)):
        if len(ids) < max_prompt_length:  # not truncated: the text exactly as written (or rendered)
            texts.append(ex.prompt if isinstance(ex.prompt, str) else
                         tokenizer.apply_chat_template(ex.prompt, tokenize=False, add_generation_prompt=True))
        else:  # the kept tail, decoded (the engine adds BOS again)
            texts.append(tokenizer.decode(ids[1:] if ids and ids[0] == bos else ids))
    columns = {k: [f["extra"].get(k) for f in features] for k in sorted({k for f in features for k in f["extra"]})}
    return PromptSet(texts, [f["prompt_ids"] for f in features], columns, [f["row"] for f in features],
                     report.source)


class PromptSampler:
    """Which prompts each step uses: a permutation per epoch, fixed by (seed, epoch); `state_dict()` holds the
    epoch and position, so a resumed run draws exactly the prompts the uninterrupted run would have."""

    def __init__(self, n: int, *, seed: int, state: dict | None = None):
        if n < 1:
            raise ValueError("PromptSampler needs at least one prompt")
        self.n, self.seed = n, seed
        self.epoch, self.position = (state["epoch"], state["position"]) if state else (0, 0)
        self._order = self._permutation(self.epoch)

    def _permutation(self, epoch: int) -> list[int]:
        return random.Random(f"{self.seed}-{epoch}").sample(range(self.n), self.n)

    def next(self, k: int, *, rank: int = 0, world: int = 1) -> list[int]:
        """The next k*world prompt indices (crossing into the next epoch as needed); this process's k."""
        out = []
        while len(out) < k * world:
            if self.position >= self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(k * world - len(out), self.n - self.position)
            out += self._order[self.position:self.position + take]
            self.position += take
        return out[rank * k:(rank + 1) * k]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}


@dataclass
class Experience:
    """One step's samples, prompt-major (B = P * G rows), all on the CPU.

    `tensors` carries further per-row tensors (first dim B) that the recipe attaches, e.g. `advantages`
    (B, T) or `values` (B, T); `select` and `minibatches` slice them with the rest.
    """

    rollouts: Rollouts
    scores: Tensor  # (B,) float32
    columns: dict[str, list]  # column -> (B,) values, each prompt's value repeated for its G samples
    prompt_index: list[int]  # (B,) index of each row's prompt in the PromptSet
    group_size: int  # G
    old_logprobs: Tensor | None = None  # (B, T) policy at sampling time; None: on-policy, use current.detach()
    ref_logprobs: Tensor | None = None  # (B, T) reference policy; None: no reference forward was run
    tensors: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.scores.shape[0]

    @property
    def response_mask(self) -> Tensor:  # (B, T) bool
        return self.rollouts.response_mask

    @property
    def sampler_logprobs(self) -> Tensor | None:
        """(B, T) the engine's own log-probs of the sampled tokens, when it records them."""
        return self.rollouts.logprobs

    @property
    def lengths(self) -> Tensor:
        """(B,) completion length in tokens."""
        return self.rollouts.response_mask.sum(-1)

    def per_row(self) -> dict[str, Tensor]:
        """Every (B, ...) tensor by name: the batch, scores, optional log-probs and the attached tensors."""
        optional = {"old_logprobs": self.old_logprobs, "ref_logprobs": self.ref_logprobs,
                    "sampler_logprobs": self.sampler_logprobs}
        return {**self.rollouts.batch(), "scores": self.scores, "finished": self.rollouts.finished,
                **{k: v for k, v in optional.items() if v is not None}, **self.tensors}

    def select(self, rows: Sequence[int] | Tensor) -> Experience:
        """The experience restricted to `rows` (keep whole groups to keep `group_size` meaningful)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        keep = idx.tolist()
        take = lambda v: v[idx] if torch.is_tensor(v) else [v[i] for i in keep] if isinstance(v, list) else v
        return _assemble([self], lambda name, values: take(values[0]))


def _assemble(parts: Sequence[Experience], combine) -> Experience:
    """An experience built field by field (Rollouts fields, `columns` and `tensors` entries included):
    combine(name, [that field of each part])."""
    first = parts[0]
    rollouts = replace(first.rollouts, **{f.name: combine(f.name, [getattr(p.rollouts, f.name) for p in parts])
                                          for f in fields(first.rollouts) if f.name != "n"})
    kw = {}
    for f in fields(first):
        values = [getattr(p, f.name) for p in parts]
        if f.name not in ("rollouts", "group_size"):
            kw[f.name] = ({k: combine(k, [v[k] for v in values]) for k in values[0]} if isinstance(values[0], dict)
                          else combine(f.name, values))
    return Experience(rollouts=rollouts, group_size=first.group_size, **kw)


def concat(parts: Sequence[Experience], pad_id: int) -> Experience:
    """Experiences stacked row-wise (e.g. DAPO refills), token tensors right-padded to the widest."""
    width = max(p.rollouts.input_ids.shape[1] for p in parts)

    def pad(t: Tensor, value: float) -> Tensor:  # (B, T, ...) -> (B, width, ...)
        if t.dim() < 2 or t.shape[1] == width:
            return t
        return torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]), value=value)

    def combine(name: str, values: list):
        if any(v is None for v in values):
            return None  # e.g. sampler log-probs missing from one part
        if torch.is_tensor(values[0]):
            return torch.cat([pad(v, pad_id if name == "input_ids" else 0) for v in values])
        return [x for v in values for x in v] if isinstance(values[0], list) else values[0]

    return _assemble(parts, combine)


def sampling_of(rollout, **override) -> Sampling:
    """The engine's `Sampling` for a `RolloutConfig` (fields overridden by keyword, e.g. temperature=0)."""
    base = Sampling(max_new_tokens=rollout.max_new_tokens, temperature=rollout.temperature, top_p=rollout.top_p,
                    top_k=rollout.top_k)
    return replace(base, **override)


def sample(engine, prompts: PromptSet, indices: Sequence[int], sampling: Sampling, n: int, *,
           seed: int | None = None) -> tuple[Rollouts, dict[str, list]]:
    """n completions of each prompt in `indices` (prompt-major) and the prompts' columns expanded to match."""
    rollouts = engine.generate([prompts.texts[i] for i in indices], n, sampling, seed=seed)
    columns = {k: [v[i] for i in indices for _ in range(n)] for k, v in prompts.columns.items()}
    return rollouts, columns


def score(reward: RewardSource, rollouts: Rollouts, columns: dict[str, list]) -> Tensor:
    """(B,) float32 scores of the completions, one batched call of the reward source; a wrong shape or a
    non-finite score is a RewardError naming the source, the row and its prompt (`rewards.checked_scores`)."""
    return checked_scores(reward, rollouts.prompts, rollouts.completions, **columns)


@torch.no_grad()
def token_logprobs(model, rollouts: Rollouts, *, temperature: float, batch_size: int = 64,
                   context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                   autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Tensor:
    """(B, T) float32 CPU log-probs of the completion tokens under `model` (eval mode, no grad), in row chunks
    of `batch_size`; the forward runs inside `context()` (e.g. LoRA adapters disabled) and `autocast()`."""
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    out = torch.zeros(rollouts.input_ids.shape, dtype=torch.float32)
    try:
        for s in range(0, out.shape[0], batch_size):
            chunk = {k: v[s:s + batch_size] for k, v in rollouts.batch().items()}
            width = int(chunk["attention_mask"].sum(-1).max())  # right-padded: trim the shared padding
            chunk = {k: v[:, :width].to(device) for k, v in chunk.items()}
            with context(), autocast():
                lp = compute_logprobs(model, chunk, temperature=temperature).logprobs
            out[s:s + batch_size, :width] = lp.float().cpu()
    finally:
        model.train(was_training)
    return out


def collect(engine, reward: RewardSource, prompts: PromptSet, indices: Sequence[int], sampling: Sampling, *,
            group_size: int, seed: int | None = None, policy=None, reference=None, batch_size: int = 64,
            autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Experience:
    """Sample G completions per prompt, score them, and compute the log-probs the update needs.

    Args:
        engine: a RolloutEngine sampling from the current policy (call `engine.sync_weights(policy)` first).
        reward: `score(prompts, completions, **columns) -> (B,)`; indices: the step's P prompts in `prompts`.
        sampling: temperature (> 0) etc.; the log-probs use its temperature. group_size: G samples per prompt.
        seed: seeds the sampler (e.g. from (seed, step) for an exactly reproducible, resumable run).
        policy: computes old log-probs; None skips that forward (fully on-policy update).
        reference: a `models.reference.LiveReference` (frozen copy, or the LoRA base with adapters off), or None
            (no reference forward). batch_size: rows per no-grad forward. autocast: precision context factory.
    Returns:
        Experience with B = P * G rows.
    """
    rollouts, columns = sample(engine, prompts, indices, sampling, group_size, seed=seed)
    scores = score(reward, rollouts, columns)
    kw = dict(temperature=sampling.temperature, batch_size=batch_size)
    old = None if policy is None else token_logprobs(policy, rollouts, autocast=autocast, **kw)
    ref = None if reference is None else token_logprobs(reference.model, rollouts, context=reference.context,
                                                        autocast=reference.autocast, **kw)
    index = [i for i in indices for _ in range(group_size)]
    return Experience(rollouts, scores, columns, index, group_size, old, ref)


def minibatches(exp: Experience, n: int, *, generator: torch.Generator | None = None) -> list[dict[str, Tensor]]:
    """The experience's rows in `n` minibatches (shuffled when a generator is given, else in order), each a dict
    of (rows, ...) CPU tensors with the token dimension trimmed to the minibatch's longest row."""
    if not 1 <= n <= len(exp):
        raise ValueError(f"cannot split {len(exp)} rows into {n} minibatches")
    order = torch.randperm(len(exp), generator=generator) if generator is not None else torch.arange(len(exp))
    tensors, width_of, full = exp.per_row(), exp.rollouts.attention_mask.sum(-1), exp.rollouts.input_ids.shape[1]
    trim = lambda v, idx, width: v[idx][:, :width] if v.dim() >= 2 and v.shape[1] == full else v[idx]
    return [{k: trim(v, idx, int(width_of[idx].max())) for k, v in tensors.items()} for idx in order.tensor_split(n)]


def rollout_metrics(exp: Experience) -> dict[str, Tensor]:
    """Scalar tensors for logging: score mean/std, completion length, share finished at EOS."""
    return {"score": exp.scores.mean(), "score_std": exp.scores.std(unbiased=False),
            "response_length": exp.lengths.float().mean(), "finished": exp.rollouts.finished.float().mean()}


def write_samples(run, step: int, exp: Experience, *, extra: dict[str, Tensor] | None = None) -> Path | None:
    """Write every row of the step (prompt, completion, score, finish reason, length, columns and `extra`
    per-row values) to `<run>/samples/step-<step>.jsonl`; nothing on non-main processes."""
    if not getattr(run, "enabled", True):
        return None
    path = Path(run.path) / "samples" / f"step-{step}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    ro = exp.rollouts
    values = {"score": exp.scores.tolist(), "length": exp.lengths.tolist(),
              **{k: v.float().tolist() for k, v in (extra or {}).items()}}  # one list per key
    with path.open("w", encoding="utf-8") as f:
        for i in range(len(exp)):
            row = {"prompt": ro.prompts[i], "completion": ro.completions[i], "finish_reason": ro.finish_reasons[i],
                   **{k: v[i] for k, v in values.items()}, **{k: v[i] for k, v in exp.columns.items()}}
            f.write(json.dumps(row, default=str) + "\n")  # a column JSON cannot hold is written as text
    return path
