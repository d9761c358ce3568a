"""REINFORCE++ under two processes (torchrun, gloo on CPU): advantages are whitened with the statistics of
both processes' tokens, exactly as if one process held the whole batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignlab.recipes.pg import PGConfig, PGOptions, compute_advantages
from alignlab.rollout import Rollouts
from alignlab.rollout.experience import Experience

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
"""Two CPU processes over gloo; --standalone picks a free port (other runs may hold the default)."""

SCRIPT = '''
import sys
import torch
sys.path[:0] = [{tests!r}, {root!r}]
from test_pg_ddp import experience, settings
from alignlab.recipes.pg import compute_advantages
from alignlab.runtime import make_accelerator, process_sum

acc = make_accelerator()
half = 4 // acc.num_processes
rows = range(acc.process_index * half, (acc.process_index + 1) * half)
advantages, stats = compute_advantages(experience(rows), settings(), 6, process_sum(acc))
torch.save({{"advantages": advantages, "rank": acc.process_index, "world": acc.num_processes}},
           {out!r} + f"/rank{{acc.process_index}}.pt")
'''


def settings() -> PGOptions:
    return PGConfig(pg=PGOptions(advantage="reinforce_pp")).settings  # k1 KL in the reward, coef 0.01


def experience(rows) -> Experience:
    """Rows of one fixed random batch of 4 completions (2 prompts x G = 2), 6 tokens, ragged masks."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(4, 6, generator=gen) > 0.3
    scores, old, ref = torch.randn(4, generator=gen), torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    idx = list(rows)
    rollouts = Rollouts(input_ids=torch.zeros(len(idx), 6, dtype=torch.long), attention_mask=torch.ones(len(idx), 6),
                        response_mask=mask[idx], prompts=["p"] * len(idx), completions=["c"] * len(idx),
                        finished=torch.ones(len(idx), dtype=torch.bool), n=2)
    return Experience(rollouts, scores[idx], {}, [i // 2 for i in idx], 2, old[idx], ref[idx])


def test_two_process_reinforce_pp_whitens_over_the_global_batch(tmp_path):
    here = Path(__file__).resolve().parent
    (tmp_path / "run.py").write_text(SCRIPT.format(tests=str(here), root=str(here.parents[1]), out=str(tmp_path)))
    cmd = [*TORCHRUN, str(tmp_path / "run.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [p["world"] for p in parts] == [2, 2]
    whole, _ = compute_advantages(experience(range(4)), settings(), 6)  # one process, the whole batch
    torch.testing.assert_close(torch.cat([p["advantages"] for p in parts]), whole)
    per_process = torch.cat([compute_advantages(experience(r), settings(), 6)[0] for r in (range(2), range(2, 4))])
    assert not torch.allclose(per_process, whole)  # the test can tell global from per-process whitening


@pytest.mark.slow
def test_two_process_grpo_reinforce_pp_runs_end_to_end(tiny_model_dir, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"count {i}:"}) + "\n" for i in range(8)))
    (tmp_path / "r.py").write_text("def r(prompts, completions):\n    return [len(c) / 10 for c in completions]\n")
    out = tmp_path / "run"
    cmd = [*TORCHRUN, "-m", "alignlab.cli", "grpo", "--model", str(tiny_model_dir), "--dataset", str(data),
           "--output-dir", str(out), "--max-steps", "2",
           "--advantage", "reinforce_pp", "--reward.sources", f"python:{tmp_path / 'r.py'}:r",
           "--rollout.prompts-per-step", "2", "--rollout.group-size", "2", "--rollout.max-new-tokens", "4",
           "--log.log-every", "1", "--log.progress", "False", "--log.tensorboard", "False",
           "--data.eval-fraction", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2] and all(abs(m["advantage_abs"]) < 10 for m in lines)
