"""build_reward from specs: every kind, weighted sums and ensembles worked by hand, config errors, and
errors in user reward code naming the source.

Two python sources on completions ("a", "bbb"): length = (1, 3), double = (2, 6).
  sum with weights (1, 0.5): (1 + 1, 3 + 3) = (2, 6)
  mean: (1.5, 4.5); min: (1, 3); population std: (0.5, 1.5); mean - 2 * std: (0.5, 1.5)
"""

from __future__ import annotations

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.rewards import (
    CodeReward,
    EnsembleReward,
    FunctionReward,
    MathReward,
    RewardError,
    WeightedSum,
    build_reward,
)
from alignlab.rewards.config import RewardSourceConfig

FUNCS = "def length(prompts, completions):\n    return [len(c) for c in completions]\n\n" \
        "def double(prompts, completions, **columns):\n    return [2.0 * len(c) for c in completions]\n\n" \
        "def broken(prompts, completions):\n    return 1 / 0\n\n" \
        "def short(prompts, completions):\n    return [1.0]\n"


@pytest.fixture
def funcs(tmp_path):
    path = tmp_path / "funcs.py"
    path.write_text(FUNCS)
    return path


def build(funcs, *names, **kwargs):
    return build_reward(RewardSourceConfig(sources=[f"python:{funcs}:{n}" for n in names], **kwargs))


def test_each_kind_builds_its_source(funcs):
    assert isinstance(build(funcs, "length"), FunctionReward)
    assert isinstance(build_reward(RewardSourceConfig(sources=["math"])), MathReward)
    code = build_reward(RewardSourceConfig(sources=["code"], timeout_s=2.0, workers=2, partial=True))
    assert isinstance(code, CodeReward) and code.tests_column == "tests" and code.partial
    assert code.limits["timeout_s"] == 2.0 and code.workers == 2


def test_weighted_sum(funcs):
    source = build(funcs, "length", "double", weights=[1.0, 0.5])
    assert isinstance(source, WeightedSum)
    assert torch.equal(source.score(["p", "p"], ["a", "bbb"]), torch.tensor([2.0, 6.0]))


@pytest.mark.parametrize(("mode", "lam", "expected"), [
    ("mean", 1.0, [1.5, 4.5]), ("min", 1.0, [1.0, 3.0]), ("mean_minus_std", 2.0, [0.5, 1.5])])
def test_ensemble_of_sources(funcs, mode, lam, expected):
    source = build(funcs, "length", "double", combine=mode, lam=lam)
    assert isinstance(source, EnsembleReward)
    assert torch.equal(source.members(["p", "p"], ["a", "bbb"]), torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    torch.testing.assert_close(source.disagreement(["p", "p"], ["a", "bbb"]), torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(source.score(["p", "p"], ["a", "bbb"]), torch.tensor(expected))


def test_a_failing_reward_function_names_its_spec(funcs):
    with pytest.raises(RewardError, match=f"reward source 'python:{funcs}:broken' raised ZeroDivisionError") as e:
        build(funcs, "broken").score(["p"], ["a"])
    assert isinstance(e.value.__cause__, ZeroDivisionError)
    with pytest.raises(RewardError, match=f"'python:{funcs}:short' returned \\(1,\\) scores for 2 completions"):
        build(funcs, "short").score(["p", "p"], ["a", "b"])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sources": []}, "reward.sources is empty"),
    ({"sources": ["nope:x"]}, "unknown reward source 'nope:x'.*rules:"),
    ({"sources": ["math", "math"], "weights": [1.0]}, "1 values for 2 sources"),
    ({"sources": ["math"], "combine": "max"}, "reward.combine must be one of"),
    ({"sources": ["math", "math"], "weights": [1.0, 2.0], "combine": "min"}, "weights apply to combine='sum'"),
    ({"sources": ["math"], "lam": -1.0}, "reward.lam must be >= 0"),
    ({"sources": ["math"], "batch_size": 0}, "reward.batch_size must be >= 1"),
    ({"sources": ["math"], "timeout_s": 0.0}, "reward.timeout_s must be > 0"),
    ({"sources": ["rules:"]}, "name the rules file"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_reward(RewardSourceConfig(**kwargs))


def test_cli_overrides_and_yaml_reach_the_reward_block(tmp_path):
    """A recipe config with a `reward` block parses dotted overrides and YAML into RewardSourceConfig."""
    from dataclasses import dataclass, field

    from alignlab.config import parse

    @dataclass
    class Recipe:
        reward: RewardSourceConfig = field(default_factory=RewardSourceConfig)

    cfg = parse(Recipe, ["--reward.sources", "math", "code", "--reward.combine", "mean_minus_std", "--reward.lam",
                         "0.5", "--reward.timeout-s", "2"])
    assert cfg.reward.sources == ["math", "code"] and cfg.reward.combine == "mean_minus_std"
    assert cfg.reward.lam == 0.5 and cfg.reward.timeout_s == 2.0
    (tmp_path / "c.yaml").write_text("reward:\n  sources: [math]\n  combine: min\n")
    assert parse(Recipe, ["--config", str(tmp_path / "c.yaml")]).reward.combine == "min"
    with pytest.raises(SystemExit):
        parse(Recipe, ["--reward.combine", "max"])
