"""A small SFT dataset with a learnable pattern: the completion names the sentiment word in the prompt."""

from __future__ import annotations

import json
import random

import pytest

WORDS = {"great": "positive", "wonderful": "positive", "terrible": "negative", "boring": "negative"}


def write_sft_rows(path, n: int = 160, seed: int = 0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            word = rng.choice(sorted(WORDS))
            f.write(json.dumps({"prompt": f"the film was {word} and", "completion": f" it was {WORDS[word]}"}) + "\n")
    return path


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory):
    return write_sft_rows(tmp_path_factory.mktemp("sft_data") / "train.jsonl")
