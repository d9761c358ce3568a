"""Rule-based rewards: a weighted sum of simple propositions about a completion.

    rules = [Rule("cites", 1.0, regex=r"\\[\\d+\\]"), Rule("no_apology", 0.5, not_regex=r"(?i)\\bsorry\\b"),
             Rule("short", 0.5, max_length=400), Rule("polite", 1.0, fn=is_polite)]
    RuleReward(rules).score(prompts, completions)          # sum of the weights of the rules each one meets
    RuleReward.from_yaml("rules.yaml")                     # the same rules from a file (spec `rules:FILE.yaml`)

A YAML rules file:

    normalize: false          # optional: divide by the sum of |weights| (scores in [-1, 1])
    rules:
      - {name: cites, weight: 1.0, regex: '\\[\\d+\\]'}
      - {name: no_apology, weight: 0.5, not_regex: '(?i)\\bsorry\\b'}
      - {name: short, weight: 0.5, max_length: 400}
      - {name: polite, weight: 1.0, python: 'my_rules.py:is_polite'}   # fn(prompt, completion) -> bool
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.errors import ConfigError
from alignlab.rewards.base import RewardError

PREDICATES = ("regex", "not_regex", "min_length", "max_length", "fn")


@dataclass
class Rule:
    """One proposition with its weight. Give exactly one predicate (or min_length and max_length together).

    Args:
        name: shown in errors and in `RuleReward.satisfied` columns.
        weight: added to the score when the proposition holds (negative: a penalty that applies when it holds).
        regex: holds when `re.search(regex, completion)` finds a match. not_regex: holds when it finds none.
        min_length / max_length: holds when the completion has at least / at most that many characters.
        fn: holds when `fn(prompt, completion)` is true.
    """

    name: str
    weight: float = 1.0
    regex: str | None = None
    not_regex: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    fn: Callable[[str, str], bool] | None = None

    def __post_init__(self):
        given = [p for p in PREDICATES if getattr(self, p) is not None]
        lengths = {"min_length", "max_length"}
        if not given or (len(given) > 1 and not set(given) <= lengths):
            raise ValueError(f"rule {self.name!r} needs exactly one predicate of {PREDICATES} (min_length and "
                             f"max_length may go together), got {given or 'none'}")
        for field in ("regex", "not_regex"):
            if getattr(self, field) is not None:
                try:
                    self._pattern = re.compile(getattr(self, field))
                except re.error as e:
                    raise ValueError(f"rule {self.name!r}, field {field!r}: invalid regular expression: {e}") from None
        for field in lengths:
            if getattr(self, field) is not None and getattr(self, field) < 0:
                raise ValueError(f"rule {self.name!r}, field {field!r}: must be >= 0")

    def holds(self, prompt: str, completion: str) -> bool:
        if self.regex is not None:
            return self._pattern.search(completion) is not None
        if self.not_regex is not None:
            return self._pattern.search(completion) is None
        if self.fn is not None:
            try:
                return bool(self.fn(prompt, completion))
            except Exception as e:
                raise RewardError(f"rule {self.name!r} raised {type(e).__name__}: {e}") from e
        n = len(completion)
        return (self.min_length is None or n >= self.min_length) and (self.max_length is None or n <= self.max_length)


class RuleReward:
    """Score = sum over rules of weight * [proposition holds] (optionally divided by sum |weight|).

    Paper: Mu et al. 2024, "Rule Based Rewards for Language Model Safety" (arXiv:2411.01111), §3: the RBR
    reward is a linear combination of proposition features, added to the reward-model score.
    Deviation: the paper grades propositions with an LLM grader and fits the weights on a small labeled
    set; here propositions are programmatic predicates (regex, length, a Python callable) with given
    weights. Add the reward model with `WeightedSum` (spec list `rm:PATH rules:FILE.yaml`).
    """

    def __init__(self, rules: list[Rule], *, normalize: bool = False, name: str = "rules"):
        if not rules:
            raise ValueError("RuleReward needs at least one rule")
        self.rules, self.normalize, self.name = rules, normalize, name

    def satisfied(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """(B, R) bool: which rule holds for which completion."""
        try:
            return torch.tensor([[r.holds(p, c) for r in self.rules] for p, c in zip(prompts, completions)],
                                dtype=torch.bool).reshape(len(completions), len(self.rules))
        except RewardError as e:
            raise RewardError(f"reward source {self.name!r}: {e}") from e.__cause__

    def score(self, prompts: list[str], completions: list[str], **columns) -> torch.Tensor:
        weights = torch.tensor([r.weight for r in self.rules], dtype=torch.float32)  # (R,)
        scores = self.satisfied(prompts, completions).float() @ weights  # (B,)
        return scores / weights.abs().sum().clamp_min(1e-12) if self.normalize else scores

    @classmethod
    def from_yaml(cls, path: str | Path) -> RuleReward:
        """Rules from a YAML file (module docstring); a bad file -> ConfigError naming file, rule and field."""
        import yaml

        path = Path(path)
        where = f"rules file {path}"
        if not path.is_file():
            raise ConfigError(f"{where}: not found")
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not valid YAML: {e}") from None
        if isinstance(doc, list):
            doc = {"rules": doc}
        if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list) or not doc["rules"]:
            raise ConfigError(f"{where}: expected a non-empty list under 'rules'")
        unknown = set(doc) - {"rules", "normalize"}
        if unknown or not isinstance(doc.get("normalize", False), bool):
            raise ConfigError(f"{where}: top-level keys are 'rules' and 'normalize' (true/false); got {sorted(doc)}")
        rules = [_rule_from(item, i, where) for i, item in enumerate(doc["rules"])]
        return cls(rules, normalize=doc.get("normalize", False), name=f"rules:{path}")


def _rule_from(item, index: int, where: str) -> Rule:
    """Rule `index` of a rules file; ConfigError naming file, rule index and field."""
    at = f"{where}, rule {index}"
    if not isinstance(item, dict):
        raise ConfigError(f"{at}: expected a mapping with name, weight and one predicate, got {item!r:.60}")
    fields = {"name", "weight", "python"} | set(PREDICATES) - {"fn"}
    for key in item:
        if key not in fields:
            raise ConfigError(f"{at}, field {key!r}: unknown field; expected one of {sorted(fields)}")
    name, weight = item.get("name", f"rule{index}"), item.get("weight", 1.0)
    types = {"name": str, "weight": (int, float), "regex": str, "not_regex": str, "min_length": int,
             "max_length": int, "python": str}
    for field, expected in types.items():
        value = item.get(field)
        if value is not None and (not isinstance(value, expected) or isinstance(value, bool)):
            raise ConfigError(f"{at}, field {field!r}: expected {getattr(expected, '__name__', 'a number')}, "
                              f"got {value!r:.60}")
    fn = None
    if "python" in item:
        from alignlab.rewards.config import load_function

        try:
            fn = load_function(item["python"])
        except ConfigError as e:
            raise ConfigError(f"{at}, field 'python': {e}") from None
    kwargs = {k: item[k] for k in PREDICATES if k in item}
    try:
        return Rule(name, float(weight), fn=fn, **kwargs)
    except ValueError as e:
        raise ConfigError(f"{at}: {e}") from None
