"""The examples in examples/ run as documented: the YAML config through the CLI, the Python script in-process."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_sample_data_files_are_read_as_sft():
    from alignlab.data import detect_schema, normalize, read_rows

    for name, schema in (("prompt_completion.jsonl", "prompt-completion"), ("conversational.jsonl", "messages")):
        rows = read_rows(EXAMPLES / name)
        assert detect_schema(rows[0].data) == schema
        assert len(normalize(rows, "sft")) == len(rows)


def test_yaml_example_through_the_cli(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "alignlab.cli", "sft", "--config", "examples/sft.yaml", "--model", str(tiny_model_dir),
         "--output-dir", str(out), "--max-steps", "3", "--log.progress", "False"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(out)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert rows[-1]["step"] == 3 and losses and all(math.isfinite(x) for x in losses)
    assert all(math.isfinite(r["eval_loss"]) for r in rows if "eval_loss" in r)
    for name in ("config.yaml", "run.log", "model.safetensors", "config.json", "tokenizer.json"):
        assert (out / name).exists(), name
    assert (out / "checkpoints" / "step-3" / "state.json").exists()


def test_python_api_example(tiny_model_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("sft_python_api", EXAMPLES / "sft_python_api.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "run"
    last = example.run(str(tiny_model_dir), str(EXAMPLES / "conversational.jsonl"), str(out), max_steps=3)
    assert last["step"] == 3 and math.isfinite(last["loss"]) and math.isfinite(last["eval_loss"])
    assert (out / "model.safetensors").exists() and (out / "metrics.jsonl").exists()
    printed = capsys.readouterr().out
    assert "schema: messages" in printed and "[<|end|>]" in printed  # the counted end-of-turn marker is shown
