"""Rule-based rewards: predicates, weighted sums worked by hand, YAML loading and its errors.

Rules: cites (+1, regex `\\[\\d+\\]`), no_apology (+0.5, not_regex `sorry`), short (+0.5, max_length 30),
rude (-2, fn: "stupid" in the completion).
  "See [1]."                          -> 1 + 0.5 + 0.5        = 2.0
  "sorry, see [2] for the full story"  -> 1 + 0 + 0 (34 chars)  = 1.0
  "you are stupid"                      -> 0 + 0.5 + 0.5 - 2     = -1.0
normalize: divide by |1| + |0.5| + |0.5| + |-2| = 4 -> 0.5, 0.25, -0.25.
"""

from __future__ import annotations

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.rewards import RewardError, Rule, RuleReward, build_reward
from alignlab.rewards.config import RewardSourceConfig

COMPLETIONS = ["See [1].", "sorry, see [2] for the full story", "you are stupid"]


def is_rude(prompt: str, completion: str) -> bool:
    return "stupid" in completion


def rules() -> list[Rule]:
    return [Rule("cites", 1.0, regex=r"\[\d+\]"), Rule("no_apology", 0.5, not_regex="sorry"),
            Rule("short", 0.5, max_length=30), Rule("rude", -2.0, fn=is_rude)]


def test_weighted_sum_worked_by_hand():
    reward = RuleReward(rules())
    satisfied = reward.satisfied(["q"] * 3, COMPLETIONS)
    assert satisfied.tolist() == [[True, True, True, False], [True, False, False, False], [False, True, True, True]]
    assert torch.equal(reward.score(["q"] * 3, COMPLETIONS), torch.tensor([2.0, 1.0, -1.0]))
    normalized = RuleReward(rules(), normalize=True).score(["q"] * 3, COMPLETIONS)
    torch.testing.assert_close(normalized, torch.tensor([0.5, 0.25, -0.25]))


def test_length_bounds_together():
    rule = Rule("medium", min_length=3, max_length=5)
    assert [rule.holds("", c) for c in ("ab", "abc", "abcde", "abcdef")] == [False, True, True, False]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({}, "exactly one predicate"),
    ({"regex": "a", "max_length": 3}, "exactly one predicate"),
    ({"regex": "("}, "invalid regular expression"),
    ({"min_length": -1}, "must be >= 0"),
])
def test_bad_rules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Rule("r", **kwargs)


def test_failing_callable_names_the_source_and_the_rule():
    def broken(prompt, completion):
        raise KeyError("oops")

    with pytest.raises(RewardError, match="reward source 'rules'.*rule 'b' raised KeyError") as info:
        RuleReward([Rule("b", fn=broken)]).score(["q"], ["a"])
    assert isinstance(info.value.__cause__, KeyError)


def test_yaml_rules_through_the_spec(tmp_path, monkeypatch):
    (tmp_path / "my_rules.py").write_text("def is_rude(prompt, completion):\n    return 'stupid' in completion\n")
    (tmp_path / "rules.yaml").write_text(
        "normalize: true\nrules:\n"
        "  - {name: cites, weight: 1.0, regex: '\\[\\d+\\]'}\n"
        "  - {name: no_apology, weight: 0.5, not_regex: sorry}\n"
        "  - {name: short, weight: 0.5, max_length: 30}\n"
        "  - {name: rude, weight: -2, python: 'my_rules.py:is_rude'}\n")
    monkeypatch.chdir(tmp_path)
    source = build_reward(RewardSourceConfig(sources=["rules:rules.yaml"]))
    assert isinstance(source, RuleReward) and source.normalize
    torch.testing.assert_close(source.score(["q"] * 3, COMPLETIONS), torch.tensor([0.5, 0.25, -0.25]))


@pytest.mark.parametrize(("text", "match"), [
    ("rules: []", "non-empty list under 'rules'"),
    ("rules:\n  - {name: a, regex: x}\nextra: 1", "top-level keys"),
    ("rules:\n  - {name: a, regex: x}\n  - {name: b, weight: heavy, regex: y}", "rule 1, field 'weight'"),
    ("rules:\n  - {name: a, regx: x}", "rule 0, field 'regx': unknown field"),
    ("rules:\n  - {name: a, regex: '('}", "rule 0: rule 'a', field 'regex': invalid regular expression"),
    ("rules:\n  - {name: a, python: 'nowhere.py:f'}", "rule 0, field 'python'.*file not found"),
    ("rules:\n  - just a string", "rule 0: expected a mapping"),
    ("rules: [", "not valid YAML"),
])
def test_yaml_errors_name_file_rule_and_field(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"rules file {path}.*{match}"):
        RuleReward.from_yaml(path)


def test_missing_rules_file():
    with pytest.raises(ConfigError, match="rules file missing.yaml: not found"):
        build_reward(RewardSourceConfig(sources=["rules:missing.yaml"]))
