"""`alignlab bon`: selection and files, eval reward, filters, RAFT rounds, CLI, bad input, and learning on the lab."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig
from alignlab.data import normalize, read_rows
from alignlab.errors import ConfigError
from alignlab.recipes.best_of_n import BoNConfig, BoNOptions, main, sft_row
from alignlab.rewards import RewardError, RewardSourceConfig

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["the movie was", "a truly", "what is", "i loved the", "the film was", "an excellent"]
REWARDS = '''
def letters(prompts, completions, bonus):
    """Count of the letter e, plus the row's `bonus` column (checks that columns reach the reward)."""
    return [c.count("e") + b for c, b in zip(completions, bonus)]


def length(prompts, completions):
    return [float(len(c)) for c in completions]


def broken(prompts, completions):
    return [float("nan")] * len(completions)
'''


@pytest.fixture
def files(tmp_path):
    """(prompts.jsonl with a `bonus` and a clashing `label` column, rewards.py)."""
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "bonus": 10 * (i % 2), "label": "x"}) + "\n"
                            for i, p in enumerate(PROMPTS)))
    rewards = tmp_path / "rewards.py"
    rewards.write_text(REWARDS)
    return data, rewards


def config(model_dir, data, rewards, out, **bon) -> BoNConfig:
    return BoNConfig(
        model=ModelConfig(path=str(model_dir)),
        data=DataConfig(dataset=str(data), max_length=32, eval_fraction=0.0),
        optim=OptimConfig(lr=1e-2, batch_size=6, max_steps=10, warmup_steps=0),
        log=LogConfig(output_dir=str(out), log_every=5, progress=False, tensorboard=False),
        reward=RewardSourceConfig(sources=[f"python:{rewards}:letters"]),
        bon=BoNOptions(**{"n": 4, "max_new_tokens": 8, **bon}),
    )


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_best_of_n_selects_each_prompts_best_and_writes_sft_data(tiny_model_dir, files, tmp_path):
    data, rewards = files
    out = tmp_path / "run"
    metrics = main(config(tiny_model_dir, data, rewards, out, eval_reward=[f"python:{rewards}:length"]))
    samples, best = jsonl(out / "samples.jsonl"), jsonl(out / "best.jsonl")
    assert len(samples) == 6 * 4 and len(best) == 6
    for i, row in enumerate(best):
        group = [s for s in samples if s["prompt_index"] == i]
        top = max(s["score"] for s in group)
        first = next(s for s in group if s["score"] == top)  # ties go to the first sample
        assert row["prompt"] == PROMPTS[i] and row["score"] == top and row["completion"] == first["completion"]
        assert [s["best"] for s in group].count(True) == 1 and first["best"]
        assert {s["row"] for s in group} == {i + 1}  # the dataset row (1-based line) of the prompt
        assert row["bonus"] == 10 * (i % 2) and row["source_label"] == "x"  # columns kept; a clash renamed
        assert row["eval_score"] == float(len(row["completion"]))
        assert row["score"] == row["completion"].count("e") + row["bonus"]  # the reward saw the bonus column
    # the curve: k=1 is the mean of all samples, k=n the mean of the selected ones
    assert metrics["score/best_of_1"] == pytest.approx(sum(s["score"] for s in samples) / 24, rel=1e-5)
    assert metrics["score/best_of_4"] == pytest.approx(metrics["score/best"], rel=1e-5)
    assert metrics["score/best"] == pytest.approx(sum(r["score"] for r in best) / 6, rel=1e-5)
    assert metrics["eval/best"] == pytest.approx(sum(r["eval_score"] for r in best) / 6, rel=1e-5)
    assert metrics["eval/best_of_4"] == pytest.approx(metrics["eval/best"], rel=1e-5)
    assert metrics["kl_bon"] == pytest.approx(math.log(4) - 3 / 4) and metrics["kept"] == 6
    assert all(math.isfinite(v) for v in metrics.values())
    assert json.loads((out / "metrics.json").read_text())["rounds"][0]["score/best"] == metrics["score/best"]
    assert jsonl(out / "metrics.jsonl")[0]["step"] == 1
    assert len(normalize(read_rows(out / "best.jsonl"), "sft")) == 6  # alignlab sft reads it as is


def test_filters_and_no_samples_file(tiny_model_dir, files, tmp_path):
    data, rewards = files
    out = tmp_path / "top"
    metrics = main(config(tiny_model_dir, data, rewards, out, top_fraction=0.5, save_samples=False))
    best = jsonl(out / "best.jsonl")
    assert metrics["kept"] == 3 and len(best) == 3 and not (out / "samples.jsonl").exists()
    assert metrics["score/kept"] >= metrics["score/best"]  # the top half of the winners
    assert min(r["score"] for r in best) >= 10  # the bonus rows (+10) are the top half
    out = tmp_path / "threshold"
    metrics = main(config(tiny_model_dir, data, rewards, out, min_score=10.0, max_prompts=4))
    assert metrics["prompts"] == 4 and metrics["kept"] == 2
    assert [r["prompt"] for r in jsonl(out / "best.jsonl")] == [PROMPTS[1], PROMPTS[3]]


def test_raft_two_rounds_trains_on_winners(tiny_model_dir, files, tmp_path):
    data, rewards = files
    out = tmp_path / "raft"
    cfg = config(tiny_model_dir, data, rewards, out, iterations=2, n=8)
    cfg.optim.max_steps = 20
    main(cfg)
    rounds = jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rounds] == [1, 2]
    # round 2 samples from the policy fine-tuned on round 1's winners: more e's (seeds 0-5 rise 0.2-0.45)
    assert rounds[1]["score/mean"] > rounds[0]["score/mean"] + 0.1, rounds
    for k in (1, 2):
        assert len(jsonl(out / f"iter-{k}" / "best.jsonl")) == 6
        saved = json.loads((out / f"iter-{k}" / "metrics.json").read_text())
        assert saved["score/mean"] == rounds[k - 1]["score/mean"]
    sft_metrics = jsonl(out / "iter-1" / "sft" / "metrics.jsonl")
    assert sft_metrics[-1]["step"] == 20 and sft_metrics[-1]["loss"] < sft_metrics[0]["loss"]
    assert not (out / "iter-1" / "sft" / "checkpoints").exists()
    assert not (out / "iter-2" / "sft").exists()  # the last round measures the final policy, no training
    final = AutoModelForCausalLM.from_pretrained(out)  # the final policy, plain transformers
    trained = AutoModelForCausalLM.from_pretrained(out / "iter-1" / "sft")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert torch.equal(final.lm_head.weight, trained.lm_head.weight)
    assert not torch.equal(final.lm_head.weight, base.lm_head.weight)


def test_cli_with_example_config(tiny_model_dir, files, tmp_path):
    from alignlab.cli import main as cli

    data, rewards = files
    out = tmp_path / "cli"
    code = cli(["bon", "--config", str(ROOT / "examples" / "bon.yaml"), "--model", str(tiny_model_dir),
                "--dataset", str(data), "--reward.sources", f"python:{rewards}:letters", "--bon.eval-reward",
                f"python:{rewards}:length", "--bon.n", "2", "--bon.max-prompts", "3", "--bon.max-new-tokens", "6",
                "--output-dir", str(out), "--log.progress", "False"])
    assert code == 0
    assert len(jsonl(out / "best.jsonl")) == 3 and "eval/best" in jsonl(out / "metrics.jsonl")[0]


def test_chat_prompts_and_prompt_length_limit(tiny_model_dir, tiny_tokenizer, files, tmp_path):
    _, rewards = files
    data = tmp_path / "chat.jsonl"
    long = "the movie was great and the acting was wonderful " * 4
    chats = [[{"role": "user", "content": p}] for p in ("the movie was", "what is", long)]
    data.write_text("".join(json.dumps({"prompt": c, "bonus": 1}) + "\n" for c in chats))
    cfg = config(tiny_model_dir, data, rewards, tmp_path / "chat", n=2)
    cfg.data.max_prompt_length = 24
    metrics = main(cfg)
    best = jsonl(tmp_path / "chat" / "best.jsonl")
    rendered = [tiny_tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    assert metrics["prompts"] == 3 and [r["prompt"] for r in best[:2]] == rendered[:2]  # what the policy saw
    assert len(tiny_tokenizer(best[2]["prompt"])["input_ids"]) <= 26 < len(tiny_tokenizer(rendered[2])["input_ids"])
    assert best[2]["prompt"].endswith(rendered[2][-20:])  # a long prompt keeps its end
    assert len(normalize(read_rows(tmp_path / "chat" / "best.jsonl"), "sft")) == 3


def test_bad_input_errors(tiny_model_dir, files, tmp_path, capsys):
    from alignlab.cli import main as cli

    data, rewards = files
    for bad, message in ((dict(n=0), "bon.n must be >= 1"), (dict(temperature=0.0), "bon.temperature"),
                         (dict(top_fraction=0.0), "bon.top_fraction"), (dict(backend="nope"), "bon.backend"),
                         (dict(max_prompts=0), "bon.max_prompts")):
        with pytest.raises(ConfigError, match=message):
            BoNOptions(**bad)
    with pytest.raises(RewardError, match=f"bon.eval_reward 'python:{rewards}:broken' returned nan for row 0 of"):
        main(config(tiny_model_dir, data, rewards, tmp_path / "nan", eval_reward=[f"python:{rewards}:broken"]))
    with pytest.raises(ConfigError, match="has no function 'missing'"):
        main(config(tiny_model_dir, data, rewards, tmp_path / "missing", eval_reward=[f"python:{rewards}:missing"]))
    code = cli(["bon", "--model", str(tiny_model_dir), "--dataset", str(tmp_path / "none.jsonl"),
                "--output-dir", str(tmp_path / "o"), "--reward.sources", f"python:{rewards}:letters"])
    assert code == 1 and "none.jsonl" in capsys.readouterr().err
    out = tmp_path / "twice"
    main(config(tiny_model_dir, data, rewards, out, n=1))
    with pytest.raises(ConfigError, match="already holds a run"):
        main(config(tiny_model_dir, data, rewards, out, n=1))


def test_sft_row_renames_schema_columns():
    row = sft_row("p", " c", {"label": True, "chosen": "a", "answer": 3}, score=1.0)
    assert row == {"prompt": "p", "completion": " c", "score": 1.0, "source_label": True, "source_chosen": "a",
                   "answer": 3}
    assert len(normalize([row], "sft")) == 1


@pytest.mark.slow
def test_gold_reward_of_best_of_n_rises_with_n(tiny_path, tmp_path):
    """The lab: tiny base model on review openings, selected and judged by the gold sentiment reward."""
    from alignlab.lab import resolve_names

    gold = {}
    for n in (1, 4, 16):
        cfg = BoNConfig(
            model=ModelConfig(path="lab:tiny"), data=DataConfig(dataset="lab:sentiment-prompts", eval_fraction=0.0),
            log=LogConfig(output_dir=str(tmp_path / f"n{n}"), progress=False, tensorboard=False),
            reward=RewardSourceConfig(sources=["lab:sentiment-gold"]),
            bon=BoNOptions(n=n, max_prompts=16, max_new_tokens=16, generation_batch_size=96), seed=0)
        gold[n] = main(resolve_names(cfg))["score/best"]
    assert gold[1] < gold[4] < gold[16], gold  # seeds 0-3 measured: 0.41-0.57 < 0.74-0.85 < 0.89-0.94
    assert gold[16] - gold[1] > 0.2, gold  # not a rounding-error rise: the gold reward lies in [0, 1]
