"""Two-process SFT with torchrun: real DDP over gloo on CPU, and only the main process writes."""

from __future__ import annotations

import json
import subprocess
import sys


def test_two_process_sft_runs_ddp_and_writes_once(tiny_model_dir, sft_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "alignlab.cli", "sft",
           "--model", str(tiny_model_dir), "--dataset", str(sft_data), "--output-dir", str(out), "--max-steps", "4",
           "--data.max-length", "32", "--optim.batch-size", "8", "--log.log-every", "1", "--log.save-every", "2",
           "--log.progress", "False", "--log.tensorboard", "False"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]  # one writer: no duplicated lines
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert proc.stderr.count("train data:") == 2  # both ranks really ran
