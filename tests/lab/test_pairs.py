"""Lab preference pairs: sampled from a policy, scored by the gold reward, labelled, written as TRL JSONL."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.data import normalize, read_rows
from alignlab.lab.pairs import preference_dataset, sentiment_pairs, write_pairs
from alignlab.lab.tasks import sentiment


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model generates faster on one thread than on two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_noiseless_pairs_prefer_the_higher_gold_reward_and_are_seeded(tiny):
    model, tok = tiny
    pairs = sentiment_pairs(24, seed=3, policy=model, tokenizer=tok, max_new_tokens=12)
    assert 20 <= len(pairs) <= 24
    for p in pairs:
        assert p.chosen.strip() and p.rejected.strip() and p.chosen != p.rejected
        assert p.score_chosen >= p.score_rejected and p.extra["gold_agrees"]
        assert p.score_chosen == sentiment.gold_reward([p.prompt + p.chosen])[0]
    assert {p.prompt for p in pairs} <= set(sentiment.all_openings())
    again = sentiment_pairs(24, seed=3, policy=model, tokenizer=tok, max_new_tokens=12)
    assert [(p.chosen, p.rejected) for p in again] == [(p.chosen, p.rejected) for p in pairs]


def test_noisy_labeler_disagrees_with_gold_sometimes(tiny):
    model, tok = tiny
    pairs = sentiment_pairs(48, seed=0, temperature=1.0, policy=model, tokenizer=tok, max_new_tokens=12)
    agree = sum(p.extra["gold_agrees"] for p in pairs) / len(pairs)
    assert 0.3 < agree < 1.0


def test_written_pairs_are_standard_preference_jsonl(tiny, tmp_path):
    model, tok = tiny
    path = preference_dataset(tmp_path / "prefs.jsonl", 8, seed=1, policy=model, tokenizer=tok, max_new_tokens=8)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows and set(rows[0]) == {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}
    back = normalize(read_rows(path), "preference")
    assert [(b.prompt, b.chosen, b.rejected) for b in back] == [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    assert write_pairs([], tmp_path / "empty.jsonl").read_text() == ""
