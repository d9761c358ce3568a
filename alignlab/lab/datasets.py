"""The lab's datasets, written as JSONL files in the lab cache so they go through the real loading path.

| name                     | rows | columns               | content                                      |
|--------------------------|------|-----------------------|----------------------------------------------|
| `lab:sentiment-sft`      | 4000 | prompt, completion    | moderately positive reviews (80% positive)   |
| `lab:sentiment-prompts`  | 2000 | prompt                | review openings ("this movie was")           |
| `lab:arithmetic-sft`     | 3000 | prompt, completion    | levels 1-3, " The answer is 85."             |
| `lab:arithmetic-prompts` | 1500 | prompt, answer, level | levels 1-3; `answer` feeds the gold reward   |

Completions start with a space: they continue the prompt's text (the lab model has no chat turns). The
SFT demonstrations are only moderately positive so that SFT lifts the gold reward above the base model
but leaves room for RLHF and DPO. Each file's name carries a hash of its generator settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from alignlab.lab.base import cache_root
from alignlab.lab.tasks import arithmetic, sentiment

DATA_VERSION = 1
"""Bump when a generator changes its output."""
SFT_POSITIVE_SHARE = 0.8
"""Share of positive reviews among the sentiment SFT demonstrations."""
SEED = 1234
"""Seed of every lab dataset (distinct from the base model's pretraining corpus seed)."""


def _sentiment_sft() -> list[dict]:
    pairs = sentiment.review_pairs(4000, seed=SEED, positive_share=SFT_POSITIVE_SHARE)
    return [{"prompt": p, "completion": c} for p, c in pairs]


def _sentiment_prompts() -> list[dict]:
    return [{"prompt": p} for p in sentiment.prompts(2000, seed=SEED + 1)]


def _arithmetic_rows(n_per_level: int, seed: int) -> list[dict]:
    rows = []
    for level in (1, 2, 3):
        rows += arithmetic.problems(n_per_level, level=level, seed=seed + level)
    return rows


def _arithmetic_sft() -> list[dict]:
    rows = _arithmetic_rows(1000, SEED + 10)
    return [{"prompt": r["prompt"], "completion": arithmetic.completion_for(r["answer"])} for r in rows]


def _arithmetic_prompts() -> list[dict]:
    return _arithmetic_rows(500, SEED + 20)


LAB_DATASETS: dict[str, Callable[[], list[dict]]] = {
    "sentiment-sft": _sentiment_sft,
    "sentiment-prompts": _sentiment_prompts,
    "arithmetic-sft": _arithmetic_sft,
    "arithmetic-prompts": _arithmetic_prompts,
}
"""Lab dataset name (without the `lab:` prefix) -> row generator."""


def dataset_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The JSONL file of lab dataset `name` ("sentiment-sft" or "lab:sentiment-sft"), written on first use."""
    name = name.removeprefix("lab:")
    if name not in LAB_DATASETS:
        raise KeyError(f"unknown lab dataset {name!r}; known: {', '.join(sorted(LAB_DATASETS))}")
    key = hashlib.sha256(f"{DATA_VERSION}-{SEED}-{SFT_POSITIVE_SHARE}-{name}".encode()).hexdigest()[:10]
    path = cache_root(cache_dir) / "datasets" / f"{name}-{key}.jsonl"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{name}-", suffix=".jsonl", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            for row in LAB_DATASETS[name]():
                handle.write(json.dumps(row) + "\n")
        os.replace(tmp, path)  # atomic; concurrent writers produce identical files, so the last one wins
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
