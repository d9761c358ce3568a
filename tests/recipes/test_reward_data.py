"""Reward-model data: step-labelled rows through the data layer (detected like every other schema, errors naming
file, row and field), and long pairs truncated and counted, never silently dropped."""

from __future__ import annotations

import json
import re

import pytest

from alignlab.data import StepLabeled, detect_schema, normalize, read_rows
from alignlab.errors import DataError
from alignlab.recipes.reward import main

from .test_reward import config, step_rows, write_jsonl

STEP = {"prompt": "what is 2 + 3?", "completions": ["2 + 3 = 5", "so the answer is 5"], "labels": [True, True]}


def test_step_rows_are_detected_and_normalized(tmp_path):
    assert detect_schema(STEP) == "stepwise"
    assert detect_schema({"prompt": "p", "completions": ["a", "b"], "scores": [1, 0]}) == "ranked"  # unchanged
    path = write_jsonl(tmp_path / "steps.jsonl", [STEP, {**STEP, "labels": [True, False], "extra": 1}])
    examples = normalize(read_rows(str(path)), "steps")
    assert examples == [StepLabeled(STEP["prompt"], STEP["completions"], [True, True], str(path), 1),
                        StepLabeled(STEP["prompt"], STEP["completions"], [True, False], str(path), 2)]
    # renamed columns work as for any schema
    renamed = [{"question": STEP["prompt"], "steps": STEP["completions"], "labels": STEP["labels"]}]
    got = normalize(renamed, "steps", columns={"prompt": "question", "completions": "steps"})
    assert got[0].steps == STEP["completions"]


@pytest.mark.parametrize("bad, field, expected", [
    ({"labels": ["yes", True]}, "labels", "true/false"),
    ({"labels": [True]}, "labels", "2 true/false"),
    ({"completions": ["ok", "  "]}, "completions[1]", "non-empty step"),
    ({"completions": []}, "completions", "non-empty list"),
    ({"prompt": [{"role": "user", "content": "hi"}]}, "prompt", "string"),
])
def test_bad_step_rows_name_file_row_and_field(tmp_path, bad, field, expected):
    path = write_jsonl(tmp_path / "steps.jsonl", [STEP, STEP, {**STEP, **bad}])
    with pytest.raises(DataError, match=re.escape(f"steps.jsonl, row 3, field '{field}'") + f".*{expected}") as err:
        normalize(read_rows(str(path)), "steps")
    assert (err.value.row, err.value.field) == (3, field)


def test_step_rows_and_pairs_are_not_mistaken_for_each_other():
    with pytest.raises(DataError, match="'stepwise' dataset has no chosen/rejected pair"):
        normalize([STEP], "preference")
    with pytest.raises(DataError, match="'preference' dataset has no list of steps"):
        normalize([{"prompt": "p", "chosen": " a", "rejected": " b"}], "steps")


def test_process_run_reads_steps_through_the_data_layer(tiny_model_dir, tmp_path):
    """`alignlab rm --rm.objective process` on renamed columns: the data layer's `--data.columns` applies."""
    rows = [{"question": r["prompt"], "steps": r["completions"], "labels": r["labels"]} for r in step_rows(16, 1)]
    data = write_jsonl(tmp_path / "renamed.jsonl", rows)
    cfg = config(tiny_model_dir, data, tmp_path / "prm", steps=2, objective="process")
    cfg.data.columns = {"prompt": "question", "completions": "steps"}
    result = main(cfg)
    assert result["process"]["steps"] == 8  # 4 held-out rows x 2 steps


def test_long_pairs_are_truncated_and_counted_not_dropped(tiny_model_dir, tmp_path):
    """Completions longer than max_length are cut by the declared policy and every pair is still trained on and
    evaluated; eval.json reports how many were cut."""
    long = " and it was great" * 12
    rows = [{"prompt": f"review {i}:", "chosen": long if i % 2 else " great", "rejected": " bad" + long}
            for i in range(16)]
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    cfg = config(tiny_model_dir, data, tmp_path / "rm", steps=2)
    cfg.data.max_length, cfg.data.eval_fraction = 24, 0.25
    result = main(cfg)
    eval_json = json.loads((tmp_path / "rm" / "eval.json").read_text())
    assert eval_json["truncation"] == result["truncation"]
    train, held = result["truncation"]["train"], result["truncation"]["eval"]
    assert train.startswith("12 examples") and "12 completions truncated, 0 dropped" in train, train
    assert held.startswith("4 examples") and "4 completions truncated, 0 dropped" in held, held
    assert result["pairs"]["pairs"] == 4  # every held-out pair scored
