"""examples/rewards.py runs as documented and prints the scores worked out below.

Completions: #0 GSM8K-style right answer, #1 hedged wrong answer, #2 boxed right answer, #3 correct add(),
#4 wrong add(), #5 `sys.exit(0)` before the tests.
  math:  1 0 1 0 0 0;  code: 0 0 0 1 0 0 (the exit hack scores 0)
  rules: #0 0.5 + 0.5 + 0.25 + 0.25 = 1.5; #1 only concise = 0.25; #3-#5 no_hedging + concise = 0.5
  math + code + 0.5 * rules: 1.75 0.125 1.75 1.25 0.25 0.25
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignlab.models import load_tokenizer
from alignlab.models.reward import load_reward_model, save_reward_model

ROOT = Path(__file__).resolve().parents[2]


def row(out: str, name: str) -> list[float]:
    line = next(line for line in out.splitlines() if line.startswith(name))
    return [float(x) for x in line[28:].split()]


@pytest.mark.slow  # ~30 s: a subprocess loads torch and a reward model
def test_rewards_example(tiny_model_dir, tmp_path):
    rm = save_reward_model(load_reward_model(tiny_model_dir), load_tokenizer(tiny_model_dir), tmp_path / "rm")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "examples/rewards.py", "--rm", str(rm)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "a 2 GB allocation under a 256 MB limit: memory limit" in out
    assert row(out, "math (answer column)") == [1, 0, 1, 0, 0, 0]
    assert row(out, "code (tests column)") == [0, 0, 0, 1, 0, 0]
    assert row(out, "rules (examples/rules.yaml)") == [1.5, 0.25, 1.5, 0.5, 0.5, 0.5]
    assert row(out, "math + code + 0.5 * rules") == [1.75, 0.12, 1.75, 1.25, 0.25, 0.25]  # 0.125 printed as 0.12
    assert row(out, "their disagreement (std)") == [0.5, 0, 0.5, 0.5, 0, 0]
    assert len(row(out, "reward model (whitened)")) == 6 and len(row(out, "mean - 0.5 std (rm, rules)")) == 6
