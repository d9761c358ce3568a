"""The lab's preference data: sampled completion pairs on the sentiment task, labelled by a simulated human.

    pairs = sentiment_pairs(512, seed=0, policy=model, tokenizer=tok)   # sample 2 per prompt, score, label
    write_pairs(pairs, "runs/demo/prefs.jsonl")                         # TRL preference JSONL
    path = preference_dataset("runs/demo/prefs.jsonl", 512, seed=0, policy=model, tokenizer=tok)  # both

Each pair: a review opening from `sentiment.prompts`, two completions sampled from the policy (`HFEngine`,
temperature `sampling_temperature`), each scored by the programmatic gold reward, then labelled by the
Bradley-Terry labeler (`labeler.label_pairs`: P(a > b) = sigmoid((g_a - g_b) / temperature); 0 = noiseless).
Pairs whose completions are blank or identical carry no preference and are dropped (and counted in the log).
DPO and reward modeling in the lab train on the same pairs, so their results are comparable.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from alignlab.data.types import PreferencePair
from alignlab.lab.labeler import label_pairs
from alignlab.lab.tasks import sentiment

log = logging.getLogger("alignlab")


def sentiment_pairs(n_prompts: int, *, seed: int, temperature: float = 0.0, policy=None, tokenizer=None,
                    max_new_tokens: int = 24, sampling_temperature: float = 1.0,
                    prompt_seed: int | None = None) -> list[PreferencePair]:
    """Labelled completion pairs for `n_prompts` seeded sentiment prompts (fewer if some pairs are dropped).

    Args:
        n_prompts: review openings to sample for (one pair each).
        seed: seeds the prompts (unless `prompt_seed`), the sampling and the labeler.
        temperature: the labeler's Bradley-Terry temperature (0 = always prefers the higher gold reward).
        policy, tokenizer: the model that writes the completions; default: the `lab:tiny` base model.
        max_new_tokens: longest sampled completion.
        sampling_temperature: softmax temperature of the policy's sampling.
        prompt_seed: seed of the prompts, when they should differ from `seed`'s.
    Returns:
        PreferencePair list with gold `score_chosen` / `score_rejected` and `extra["gold_agrees"]`.
    """
    from alignlab.rollout import HFEngine, Sampling

    if policy is None or tokenizer is None:
        from alignlab.lab.base import tiny_model_path
        from alignlab.models import load_model, load_tokenizer

        path = tiny_model_path()
        policy, tokenizer = policy or load_model(path), tokenizer or load_tokenizer(path)
    prompts = sentiment.prompts(n_prompts, seed=seed if prompt_seed is None else prompt_seed)
    rollouts = HFEngine(policy, tokenizer).generate(
        prompts, 2, Sampling(max_new_tokens=max_new_tokens, temperature=sampling_temperature), seed=seed)
    a, b = rollouts.completions[0::2], rollouts.completions[1::2]
    keep = [i for i in range(len(prompts)) if a[i].strip() and b[i].strip() and a[i] != b[i]]
    if len(keep) < len(prompts):
        log.info("lab pairs: dropped %d of %d pairs with a blank or identical completion",
                 len(prompts) - len(keep), len(prompts))
    prompts, a, b = [prompts[i] for i in keep], [a[i] for i in keep], [b[i] for i in keep]
    gold_a = sentiment.gold_reward([p + c for p, c in zip(prompts, a)])
    gold_b = sentiment.gold_reward([p + c for p, c in zip(prompts, b)])
    return label_pairs(prompts, a, b, gold_a, gold_b, temperature=temperature, seed=seed)


def write_pairs(pairs: list[PreferencePair], path: str | os.PathLike) -> Path:
    """Write `pairs` as TRL-style preference JSONL (prompt, chosen, rejected, score_chosen, score_rejected),
    atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=".jsonl", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            for p in pairs:
                handle.write(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                                         "score_chosen": p.score_chosen, "score_rejected": p.score_rejected}) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def preference_dataset(path: str | os.PathLike, n_prompts: int, *, seed: int, **kwargs) -> Path:
    """`sentiment_pairs(n_prompts, seed=seed, **kwargs)` written to `path` (for the demo and the lab)."""
    pairs = sentiment_pairs(n_prompts, seed=seed, **kwargs)
    agree = sum(p.extra["gold_agrees"] for p in pairs) / max(len(pairs), 1)
    log.info("lab pairs: %d pairs, labels agree with gold on %.0f%%, written to %s", len(pairs), 100 * agree, path)
    return write_pairs(pairs, path)
