"""Lab datasets written as JSONL files in the cache."""

from __future__ import annotations

import json
import statistics

import pytest

from alignlab.lab.datasets import LAB_DATASETS, dataset_path
from alignlab.lab.tasks import arithmetic, sentiment

COLUMNS = {
    "sentiment-sft": {"prompt", "completion"},
    "sentiment-prompts": {"prompt"},
    "arithmetic-sft": {"prompt", "completion"},
    "arithmetic-prompts": {"prompt", "answer", "level"},
}


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(LAB_DATASETS))
def test_files_written_once(name, tmp_path):
    path = dataset_path(f"lab:{name}", tmp_path)
    assert path.suffix == ".jsonl" and path.parent == tmp_path / "datasets"
    rows = _rows(path)
    assert 1000 <= len(rows) <= 10_000
    assert all(set(r) == COLUMNS[name] for r in rows)
    mtime = path.stat().st_mtime_ns
    assert dataset_path(name, tmp_path) == path and path.stat().st_mtime_ns == mtime
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_sentiment_sft_is_moderately_positive(tmp_path):
    rows = _rows(dataset_path("sentiment-sft", tmp_path))
    gold = statistics.mean(sentiment.gold_reward([r["prompt"] + r["completion"] for r in rows]))
    assert 0.6 < gold < 0.8
    assert all(r["completion"].startswith(" ") for r in rows)


def test_arithmetic_rows_are_consistent(tmp_path):
    for r in _rows(dataset_path("arithmetic-prompts", tmp_path)):
        assert arithmetic.gold_reward([arithmetic.completion_for(r["answer"])], [r["answer"]]) == [1.0]
    sft = _rows(dataset_path("arithmetic-sft", tmp_path))
    assert sft[0]["completion"].startswith(" The answer is ")


def test_unknown_name(tmp_path):
    with pytest.raises(KeyError, match="sentiment-sft"):
        dataset_path("lab:nope", tmp_path)
