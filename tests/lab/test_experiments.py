"""`alignlab lab list` / `alignlab lab run NAME --scale tiny`: each experiment end to end, from the CLI."""

from __future__ import annotations

import json

import pytest

from alignlab.cli import main as cli
from alignlab.lab.experiments import EXPERIMENTS, load


def test_every_experiment_declares_paper_claim_and_scales():
    for name in EXPERIMENTS:
        module = load(name)
        assert module.PAPER and module.CLAIM
        assert set(module.SCALES) == {"tiny", "default", "large"}


def test_lab_list_prints_every_experiment(capsys):
    assert cli(["lab", "list", "--verbose", "True"]) == 0
    out = capsys.readouterr().out
    for name in EXPERIMENTS:
        assert name in out
    assert "--scale tiny" in out


def test_unknown_experiment_is_a_one_line_error(capsys):
    assert cli(["lab", "run", "no-such-paper"]) == 1
    err = capsys.readouterr().err
    assert "unknown lab experiment 'no-such-paper'" in err and "preference-losses" in err


def run_tiny(name: str, tmp_path) -> dict:
    out = tmp_path / name
    assert cli(["lab", "run", name, "--scale", "tiny", "--output-dir", str(out), "--progress", "False"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["name"] == name and result["scale"] == "tiny"
    report = (out / "report.md").read_text()
    assert load(name).CLAIM in report and "| claim | our measurement | holds |" in report
    for plot in result["plots"]:
        assert (out / plot).stat().st_size > 1000
    return result


@pytest.mark.slow
def test_pm_vs_imitation_tiny(tiny_path, tmp_path):
    result = run_tiny("pm-vs-imitation", tmp_path)
    numbers = result["numbers"]
    assert set(numbers["accuracy"]) == {"bradley_terry", "binary", "imitation"}
    curve = numbers["acc_at_k"]["bradley_terry"]
    assert curve["oracle"] == sorted(curve["oracle"])  # the gold picker's best-of-k never gets worse with k
    pm_vs_imitation = next(c for c in result["checks"] if "beats imitation" in c["claim"])
    assert pm_vs_imitation["holds"], pm_vs_imitation


@pytest.mark.slow
def test_preference_losses_tiny(tiny_path, tmp_path):
    result = run_tiny("preference-losses", tmp_path)
    runs = result["numbers"]["runs"]
    assert set(runs) == {"dpo@0", "dpo@0.4", "ipo@0", "ipo@0.4"}
    assert all(r["kl"] > 0 for r in runs.values())  # every loss moved the policy off the SFT model
    raised = result["checks"][0]
    assert raised["holds"], raised  # on clean labels the losses raise gold reward over SFT


def check(result: dict, words: str) -> dict:
    return next(c for c in result["checks"] if words in c["claim"])


@pytest.mark.slow
def test_instructgpt_tiny(tiny_path, tmp_path):
    result = run_tiny("instructgpt", tmp_path)
    assert set(result["numbers"]["stages"]) == {"base", "sft", "ppo"}
    assert check(result, "SFT beats the base")["holds"]


@pytest.mark.slow
def test_hh_sqrt_kl_tiny(tiny_path, tmp_path):
    result = run_tiny("hh-sqrt-kl", tmp_path)
    points = result["numbers"]["points"]
    assert [p["step"] for p in points] == [0, 2, 4]
    assert 0 < points[1]["kl"] < points[2]["kl"]  # PPO moves the policy steadily away from the SFT model
    assert {"intercept", "slope", "r2"} <= set(result["numbers"]["fit"])


@pytest.mark.slow
def test_rm_ensembles_tiny(tiny_path, tmp_path):
    result = run_tiny("rm-ensembles", tmp_path)
    runs = result["numbers"]["runs"]
    assert set(runs) == {"single", "min"}
    assert all(r["final_kl"] > 0 and r["peak_gold"] >= r["final_gold"] for r in runs.values())


@pytest.mark.slow
def test_dpo_frontier_tiny(tiny_path, tmp_path):
    result = run_tiny("dpo-frontier", tmp_path)
    points = result["numbers"]["points"]
    assert len(points["dpo"]) == len(points["ppo"]) == 2  # checkpoints at steps 2 and 4
    assert check(result, "raise gold reward over SFT")["holds"]


@pytest.mark.slow
def test_overoptimization_tiny(tiny_path, tmp_path):
    result = run_tiny("overoptimization", tmp_path)
    bon = result["numbers"]["bon"]["32"]
    assert bon["k"] == [1, 2, 4] and bon["d"][0] == 0.0
    assert bon["proxy"] == sorted(bon["proxy"])  # the proxy's best-of-k pick scores higher with k
    assert check(result, "raises the proxy reward")["holds"]


@pytest.mark.slow
def test_rl_algorithms_tiny(tiny_path, tmp_path):
    result = run_tiny("rl-algorithms", tmp_path)
    runs = result["numbers"]["runs"]
    assert set(runs) == {"grpo", "rloo"}
    for r in runs.values():  # each ran in its own process: its own wall time and peak memory
        assert r["seconds"] > 0 and 100 < r["peak_rss_mb"] < 8000
        assert 0.0 <= r["accuracy_start"] <= 1.0 and 0.0 <= r["accuracy_end"] <= 1.0
    assert result["numbers"]["samples_per_step"] == 16
