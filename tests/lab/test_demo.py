"""`alignlab demo` end to end through the CLI, at a small size."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_runs_and_sft_beats_base_on_gold_reward(tiny_path, tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "alignlab.cli", "demo", "--output-dir", str(out), "--sft-steps", "60",
         "--eval-prompts", "96", "--progress", "False"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["stage"]: r for r in json.loads((out / "results.json").read_text())}
    assert set(results) == {"base", "sft"}
    assert 0.35 < results["base"]["gold_reward"] < 0.65  # the base model is imperfect: room to align
    assert results["sft"]["gold_reward"] > results["base"]["gold_reward"] + 0.05
    assert results["sft"]["kl_to_base"] > 0
    assert (out / "report.png").stat().st_size > 10_000
    assert (out / "sft" / "metrics.jsonl").exists() and (out / "sft" / "model.safetensors").exists()
    assert "gold reward" in proc.stdout and "sft" in proc.stdout
