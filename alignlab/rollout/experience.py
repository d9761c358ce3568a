"""The experience step every online-RL recipe shares: prompts -> rollouts -> scores -> old/reference log-probs.

    prompts = load_prompts(cfg.data, tokenizer, max_prompt_length=cfg.rollout.max_prompt_length)
    order = PromptSampler(len(prompts), seed=cfg.seed)         # order.state_dict() goes into checkpoints
    engine = make_engine(policy, tokenizer, backend=cfg.rollout.backend)
    exp = collect(engine, reward, prompts, order.next(P), sampling_of(cfg.rollout), group_size=G, seed=s,
                  policy=policy_or_None, reference=reference_or_None)
    exp.tensors["advantages"] = ...                            # per-row tensors ride along
    for mb in minibatches(exp, n, generator=g): ...            # dicts of (rows, ...) tensors
    write_samples(run, step, exp)                              # run_dir/samples/step-N.jsonl

Rows are prompt-major: rows i*G .. i*G+G-1 are the G samples of the batch's i-th prompt (B = P*G).
All tensors of an `Experience` are on the CPU, as the engine returns them; `minibatches` yields host tensors
that the recipe moves with `to_device`. Nothing here syncs a device except the (no-grad) log-prob forwards'
results being moved to the CPU, once per collect.

Log-probs are those of softmax(logits / T) with T the sampling temperature, for the policy and the reference
alike: the distribution the samples were drawn from (top-k/top-p filtering is not part of it).
Old log-probs (the behaviour policy's, for the PPO ratio) are optional: with one epoch of one minibatch the
update is fully on-policy, old = current.detach(), and the recipe passes `policy=None` to skip the forward.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from alignlab.data import normalize, read_rows, tokenize_prompts
from alignlab.models.logprobs import compute_logprobs
from alignlab.rewards.base import RewardSource
from alignlab.rollout.base import Rollouts, Sampling

log = logging.getLogger("alignlab")

SAMPLES_DIR = "samples"


# ---------------------------------------------------------------- prompts


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
    """Read a prompt dataset (any schema with a prompt; GSM8K and TRL prompt rows as they are), keep its other
    columns for reward functions, and render/truncate the prompts.

    Args:
        data: a `DataConfig` (dataset, split, subset, columns, max_rows).
        max_prompt_length: prompts longer than this keep their last tokens (BOS kept in front).
    """
    rows = read_rows(data.dataset, split=data.split, subset=data.subset, max_rows=data.max_rows)
    examples = normalize(rows, "prompt", columns=data.columns or None)
    features, report = tokenize_prompts(examples, tokenizer, max_prompt_length=max_prompt_length)
    log.info("prompts: %d from %s, %d truncated to their last %d tokens", len(features), report.source,
             report.prompt_truncated, max_prompt_length)
    texts = []
    for ex, feat in zip(examples, features):
        if len(feat["prompt_ids"]) < max_prompt_length:  # not truncated: the text exactly as written
            texts.append(ex.prompt if isinstance(ex.prompt, str) else
                         tokenizer.apply_chat_template(ex.prompt, tokenize=False, add_generation_prompt=True))
        else:  # the kept tail, decoded (the engine adds BOS again)
            ids = feat["prompt_ids"]
            bos = getattr(tokenizer, "bos_token_id", None)
            texts.append(tokenizer.decode(ids[1:] if ids and ids[0] == bos else ids))
    names = sorted({k for f in features for k in f["extra"]})
    columns = {k: [f["extra"].get(k) for f in features] for k in names}
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
        order = list(range(self.n))
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return order

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


# ---------------------------------------------------------------- experience


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
    def response_mask(self) -> Tensor:
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
        out = {**self.rollouts.batch(), "scores": self.scores, "finished": self.rollouts.finished}
        for name, value in (("old_logprobs", self.old_logprobs), ("ref_logprobs", self.ref_logprobs),
                            ("sampler_logprobs", self.sampler_logprobs)):
            if value is not None:
                out[name] = value
        return {**out, **self.tensors}

    def select(self, rows: Sequence[int] | Tensor) -> Experience:
        """The experience restricted to `rows` (keep whole groups to keep `group_size` meaningful)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        keep = idx.tolist()
        ro = self.rollouts
        rollouts = replace(ro, input_ids=ro.input_ids[idx], attention_mask=ro.attention_mask[idx],
                           response_mask=ro.response_mask[idx], prompts=[ro.prompts[i] for i in keep],
                           completions=[ro.completions[i] for i in keep], finished=ro.finished[idx],
                           logprobs=None if ro.logprobs is None else ro.logprobs[idx])
        pick = lambda t: None if t is None else t[idx]
        return Experience(rollouts, self.scores[idx], {k: [v[i] for i in keep] for k, v in self.columns.items()},
                          [self.prompt_index[i] for i in keep], self.group_size, pick(self.old_logprobs),
                          pick(self.ref_logprobs), {k: v[idx] for k, v in self.tensors.items()})


def _pad_to(t: Tensor, width: int, value: float = 0) -> Tensor:
    """Right-pad a (B, T, ...) tensor with `value` to T = width ((B,) tensors are returned as they are)."""
    if t.dim() < 2 or t.shape[1] == width:
        return t
    return torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]), value=value)


def concat(parts: Sequence[Experience], pad_id: int) -> Experience:
    """Experiences stacked row-wise (e.g. DAPO refills), token tensors right-padded to the widest."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.rollouts.input_ids.shape[1] for p in parts)

    def cat(get, value: float = 0) -> Tensor | None:
        values = [get(p) for p in parts]
        return None if any(v is None for v in values) else torch.cat([_pad_to(v, width, value) for v in values])

    ro = parts[0].rollouts
    rollouts = replace(ro, input_ids=cat(lambda p: p.rollouts.input_ids, pad_id),
                       attention_mask=cat(lambda p: p.rollouts.attention_mask),
                       response_mask=cat(lambda p: p.rollouts.response_mask),
                       prompts=[s for p in parts for s in p.rollouts.prompts],
                       completions=[s for p in parts for s in p.rollouts.completions],
                       finished=cat(lambda p: p.rollouts.finished), logprobs=cat(lambda p: p.rollouts.logprobs))
    columns = {k: [v for p in parts for v in p.columns[k]] for k in parts[0].columns}
    return Experience(rollouts, cat(lambda p: p.scores), columns, [i for p in parts for i in p.prompt_index],
                      parts[0].group_size, cat(lambda p: p.old_logprobs), cat(lambda p: p.ref_logprobs),
                      {k: cat(lambda p, k=k: p.tensors[k]) for k in parts[0].tensors})


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
    """(B,) float32 scores of the completions, one batched call of the reward source."""
    scores = reward.score(rollouts.prompts, rollouts.completions, **columns)
    if scores.dim() != 1:
        raise ValueError(f"the reward must give one score per completion, got shape {tuple(scores.shape)} "
                         "(combine a multi-objective source into one score with reward.weights)")
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"the reward returned a non-finite score for completion(s) {bad[:5]} "
                         f"(e.g. {rollouts.completions[bad[0]]!r})")
    return scores.float()


@torch.no_grad()
def token_logprobs(model, rollouts: Rollouts, *, temperature: float, batch_size: int = 64,
                   context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Tensor:
    """(B, T) float32 CPU log-probs of the completion tokens under `model` (eval mode, no grad), in row chunks
    of `batch_size`; `context` wraps the forward (autocast, LoRA adapters disabled for the reference)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.zeros(rollouts.input_ids.shape, dtype=torch.float32)
    try:
        for s in range(0, out.shape[0], batch_size):
            chunk = {k: v[s:s + batch_size] for k, v in rollouts.batch().items()}
            width = int(chunk["attention_mask"].sum(-1).max())  # right-padded: trim the shared padding
            chunk = {k: v[:, :width].to(device) for k, v in chunk.items()}
            with context():
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
        engine: a RolloutEngine sampling from the current policy (`engine.sync_weights(policy)` first if it
            holds its own copy).
        reward: scores completions, `score(prompts, completions, **columns) -> (B,)`.
        indices: the step's prompts (indices into `prompts`), P of them.
        sampling: temperature (> 0) etc.; log-probs below use its temperature.
        group_size: G samples per prompt.
        seed: seeds the sampler (e.g. `cfg.seed + step` for an exactly reproducible, resumable run).
        policy: compute old log-probs with it; None skips that forward (fully on-policy update).
        reference: a `models.reference.LiveReference` (frozen copy, or the LoRA base with adapters off), or
            None to skip the reference forward (no KL term).
        batch_size: rows per no-grad forward.
        autocast: the precision context of the forwards (e.g. `accelerator.autocast`).
    Returns:
        Experience with B = P * G rows.
    """
    rollouts, columns = sample(engine, prompts, indices, sampling, group_size, seed=seed)
    scores = score(reward, rollouts, columns)
    kw = dict(temperature=sampling.temperature, batch_size=batch_size)
    old = None if policy is None else token_logprobs(policy, rollouts, context=autocast, **kw)
    ref = None
    if reference is not None:
        def context():
            stack = contextlib.ExitStack()
            stack.enter_context(reference.context())
            stack.enter_context(reference.autocast())
            return stack

        ref = token_logprobs(reference.model, rollouts, context=context, **kw)
    index = [i for i in indices for _ in range(group_size)]
    return Experience(rollouts, scores, columns, index, group_size, old, ref)


def minibatches(exp: Experience, n: int, *, generator: torch.Generator | None = None) -> list[dict[str, Tensor]]:
    """The experience's rows in `n` minibatches (shuffled when a generator is given, else in order), each a dict
    of (rows, ...) CPU tensors with the token dimension trimmed to the minibatch's longest row."""
    if not 1 <= n <= len(exp):
        raise ValueError(f"cannot split {len(exp)} rows into {n} minibatches")
    order = torch.randperm(len(exp), generator=generator) if generator is not None else torch.arange(len(exp))
    tensors = exp.per_row()
    width_of = exp.rollouts.attention_mask.sum(-1)
    out = []
    for idx in order.tensor_split(n):
        width = int(width_of[idx].max())
        out.append({k: v[idx][:, :width] if v.dim() >= 2 and v.shape[1] == exp.rollouts.input_ids.shape[1]
                    else v[idx] for k, v in tensors.items()})
    return out


def rollout_metrics(exp: Experience) -> dict[str, Tensor]:
    """Scalar tensors for logging: score mean/std, completion length, share finished at EOS."""
    return {"score": exp.scores.mean(), "score_std": exp.scores.std(unbiased=False),
            "response_length": exp.lengths.float().mean(), "finished": exp.rollouts.finished.float().mean()}


def write_samples(run, step: int, exp: Experience, *, extra: dict[str, Tensor] | None = None) -> Path | None:
    """Write every row of the step (prompt, completion, score, finish reason, length, columns and `extra`
    per-row values) to `<run>/samples/step-<step>.jsonl`; nothing on non-main processes."""
    if not getattr(run, "enabled", True):
        return None
    folder = Path(run.path) / SAMPLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step}.jsonl"
    ro = exp.rollouts
    values = {"score": exp.scores.tolist(), "length": exp.lengths.tolist(),
              **{k: v.float().tolist() for k, v in (extra or {}).items()}}
    with path.open("w", encoding="utf-8") as f:
        for i in range(len(exp)):
            row = {"prompt": ro.prompts[i], "completion": ro.completions[i], "finish_reason": ro.finish_reasons[i],
                   **{k: v[i] for k, v in values.items()},
                   **{k: v[i] for k, v in exp.columns.items() if _jsonable(v[i])}}
            f.write(json.dumps(row) + "\n")
    return path


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
