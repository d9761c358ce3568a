"""A small SFT dataset with a learnable pattern: the completion names the sentiment word in the prompt."""

from __future__ import annotations

import json
import random
import shutil

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


@pytest.fixture
def resumed_like_full(tmp_path):
    """A check: copy the finished run `full`, delete its checkpoints at `drop_steps` and its eval.json, resume
    `cfg` there with `main`, and say whether the metrics it writes equal `full`'s (throughput aside)."""

    def lines(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]

    def check(main, cfg, full, drop_steps) -> bool:
        resumed = tmp_path / "resumed"
        shutil.copytree(full, resumed)
        for step in drop_steps:
            shutil.rmtree(resumed / "checkpoints" / f"step-{step}")
        (resumed / "eval.json").unlink()
        cfg.log.output_dir, cfg.resume = str(resumed), True
        main(cfg)
        return lines(resumed) == lines(full)

    return check
