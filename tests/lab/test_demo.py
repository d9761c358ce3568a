"""`alignlab demo`: end to end through the CLI at a small size, and the report on hand-made stage results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from alignlab.errors import ConfigError
from alignlab.lab.demo import DemoConfig, StageResult
from alignlab.lab.demo_report import table, write_report

STAGES = ["base", "sft", "pairs", "rm", "dpo", "ppo"]
SMALL = ["--sft-steps", "60", "--pairs", "800", "--rm-steps", "80", "--dpo-steps", "20", "--dpo-evals", "2",
         "--dpo-lr", "5e-4", "--ppo-steps", "12", "--ppo-evals", "2", "--eval-prompts", "96", "--progress", "False"]


@pytest.mark.slow
def test_demo_end_to_end_sft_rm_dpo_ppo(tiny_path, tmp_path):
    """About 35 s of CPU: SFT 60 steps, 800 pairs, RM 80 steps, DPO 20 steps and PPO 12 steps with 2 evaluated
    checkpoints each."""
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: the same numbers on a busy or an idle machine
    proc = subprocess.run([sys.executable, "-m", "alignlab.cli", "demo", "--output-dir", str(out), *SMALL],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())
    assert [r["stage"] for r in rows] == STAGES
    r = {row["stage"]: row for row in rows}
    # the claims: SFT beats the base model, DPO beats SFT on the gold reward, the RM ranks held-out pairs as gold does
    assert 0.35 < r["base"]["gold_reward"] < 0.65
    assert r["sft"]["gold_reward"] > r["base"]["gold_reward"] + 0.05
    assert r["dpo"]["gold_reward"] > r["sft"]["gold_reward"] + 0.05
    assert r["rm"]["rm_accuracy"] > 0.6
    assert r["dpo"]["proxy_reward"] > r["sft"]["proxy_reward"]  # the RM agrees that DPO improved the policy
    # PPO against the RM (measured at this size: gold 0.59 -> 0.73, proxy -0.13 -> +0.77, KL to SFT 3.0)
    assert r["ppo"]["gold_reward"] > r["sft"]["gold_reward"] + 0.05
    assert r["ppo"]["proxy_reward"] > r["sft"]["proxy_reward"] + 0.3 and r["ppo"]["kl_to_sft"] > 0
    assert [p["step"] for p in r["ppo"]["curve"]] == [0, 6, 12]
    assert r["sft"]["kl_to_sft"] == 0 and r["dpo"]["kl_to_sft"] > 0 and r["sft"]["kl_to_base"] > 0
    assert [k for k in r if r[k]["rm_accuracy"] is not None] == ["rm"]
    assert all(r[k]["gold_reward"] is None for k in ("pairs", "rm")) and all(x["seconds"] > 0 for x in rows)
    # DPO's curve: the SFT policy at step 0, then each checkpoint; its last point is the DPO row
    curve = r["dpo"]["curve"]
    assert [p["step"] for p in curve] == [0, 10, 20]
    assert curve[0]["gold_reward"] == r["sft"]["gold_reward"] and curve[-1]["kl_to_sft"] == r["dpo"]["kl_to_sft"]
    # held-out pairs carry the gold preference, without ties; train + held-out come from the 800 sampled pairs
    held = [json.loads(line) for line in (out / "pairs" / "heldout.jsonl").open()]
    assert held and all(p["score_chosen"] > p["score_rejected"] for p in held)
    assert r["pairs"]["info"]["heldout_pairs"] == len(held) == r["rm"]["info"]["heldout_pairs"]
    assert r["pairs"]["info"]["train_pairs"] + len(held) <= 800
    for path in ("sft/model.safetensors", "rm/eval.json", "rm/heldout/metrics.json", "dpo/model.safetensors",
                 "dpo/checkpoints/step-10", "ppo/model.safetensors", "ppo/critic/model.safetensors",
                 "ppo/checkpoints/step-6", "ppo/samples/step-12.jsonl", "report.png"):
        assert (out / path).exists(), path
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 7 and 'src="http' not in html
    assert '<table id="results">' in html and all(f"<td>{s}</td>" in html for s in STAGES)
    header = next(line for line in proc.stdout.splitlines() if line.startswith("stage"))
    assert all(c in header for c in ("gold reward", "proxy reward", "KL to SFT", "RM accuracy"))
    assert [line.split()[0] for line in proc.stdout.splitlines() if line.split()[:1] and line.split()[0] in STAGES
            and len(line.split()) == 8] == STAGES
    assert f"report: {out / 'report.html'}" in proc.stdout


def test_report_renders_missing_metrics_curves_and_escapes_samples(tmp_path):
    run = tmp_path / "dpo"
    run.mkdir()
    run.joinpath("metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in (
        {"step": 5, "loss": 0.69, "rewards/margin": 0.01}, {"step": 10, "loss": 0.6, "rewards/margin": 0.2,
                                                           "eval/loss": 0.65, "eval/rewards/margin": 0.1})))
    point = {"gold_reward": 0.6, "proxy_reward": 0.0, "kl_to_sft": 0.0, "kl_to_base": 0.5}
    results = [
        StageResult("sft", **point, samples=["a <b>bold</b> & review"], seconds=2.0, cpu_seconds=1.5),
        StageResult("rm", rm_accuracy=0.8125, info={"heldout_pairs": 16}),
        StageResult("dpo", gold_reward=0.75, proxy_reward=0.5, kl_to_sft=2.5, kl_to_base=3.0, run_dir=str(run),
                    curve=[{"step": 0, **point}, {"step": 10, "gold_reward": 0.75, "proxy_reward": 0.5,
                                                  "kl_to_sft": 2.5, "kl_to_base": 3.0}]),
    ]
    text = table(results)
    rows = {line.split()[0]: line.split() for line in text.splitlines()[1:4]}
    assert rows["rm"][1:5] == ["-"] * 4 and rows["rm"][5] == "0.812" and rows["sft"][5] == "-"
    assert rows["dpo"][1:5] == ["0.750", "+0.50", "2.50", "3.00"]
    assert "total: 2 s wall, 2 s CPU" in text
    html_path = write_report(tmp_path, results, DemoConfig(output_dir=str(tmp_path)))
    html = html_path.read_text()
    # no SFT or RM run directory here: the DPO curves, gold/proxy and gold-vs-KL panels are drawn, the rest skipped
    assert html.count('src="data:image/png;base64,') == 4
    assert "a &lt;b&gt;bold&lt;/b&gt; &amp; review" in html and "<b>bold" not in html
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_config_rejects_empty_stages():
    with pytest.raises(ConfigError, match="pairs"):
        DemoConfig(pairs=0)
    with pytest.raises(ConfigError, match="heldout_fraction"):
        DemoConfig(heldout_fraction=1.0)
