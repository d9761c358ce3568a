"""CodeReward: code extraction, tests splitting, sandboxed scoring (pass, fail, exit hacks, timeouts)."""

from __future__ import annotations

import pytest
import torch

from alignlab.errors import DataError
from alignlab.rewards import CodeReward, build_reward, extract_code
from alignlab.rewards.code import split_tests
from alignlab.rewards.config import RewardSourceConfig

TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0"
GOOD = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nHope it helps."
WRONG = "```python\ndef add(a, b):\n    return a - b\n```"


@pytest.mark.parametrize(("text", "code"), [
    (GOOD, "def add(a, b):\n    return a + b"),
    ("```\nx = 1\n```\nthen\n```py\ny = 2\n```", "y = 2"),  # a labeled python block wins
    ("```text\nignored\n```\n```\nz = 3\n```", "z = 3"),  # else the last block
    ("def f():\n    return 1\n", "def f():\n    return 1"),  # no fence: the raw text
    ("```python\ndef g():\n    return 2", "def g():\n    return 2"),  # unclosed fence (cut off)
])
def test_extract_code(text, code):
    assert extract_code(text) == code


def test_split_tests():
    units = split_tests("import math\ndef check(f):\n    assert f(1, 1) == 2\nassert math.pi > 3\ncheck(add)", "w")
    assert [counted for _, counted in units] == [False, False, True, True]
    assert split_tests(["assert a", "assert b"], "w") == [("assert a", True), ("assert b", True)]
    with pytest.raises(DataError, match="w: the tests do not parse"):
        split_tests("assert (", "w")
    with pytest.raises(DataError, match="no test"):
        split_tests("x = 1", "w")


def test_code_reward_scores_in_the_sandbox():
    completions = [GOOD, WRONG, "import sys\nsys.exit(0)", "import os\nos._exit(0)",
                   "def add(a, b):\n    while True:\n        pass", "syntax error here"]
    reward = CodeReward(timeout_s=1.0, workers=3)
    scores = reward.score(["p"] * 6, completions, tests=[TESTS] * 6)
    assert scores.dtype == torch.float32 and scores.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    reasons = [r.reason for r in reward.last_results]
    assert reasons[0] == "ok" and reasons[4] == "timeout" and reasons[5] == "exit code 1"


def test_partial_credit_and_list_tests_through_the_spec():
    cfg = RewardSourceConfig(sources=["code:checks"], partial=True, timeout_s=2.0)
    source = build_reward(cfg)
    half = "def add(a, b):\n    return a * b"  # add(2, 2) == 4 passes, add(1, 2) == 3 fails
    tests = [["assert add(2, 2) == 4", "assert add(1, 2) == 3"]] * 2
    assert source.score(["p", "p"], [half, GOOD], checks=tests).tolist() == [0.5, 1.0]


def test_failing_setup_fails_the_remaining_tests():
    tests = "import not_a_module_xyz\nassert add(1, 2) == 3"
    assert CodeReward(partial=True).score(["p"], [GOOD], tests=[tests]).tolist() == [0.0]


def test_missing_tests_column():
    with pytest.raises(DataError, match="needs the column 'tests'"):
        CodeReward().score(["p"], [GOOD], answer=["1"])
