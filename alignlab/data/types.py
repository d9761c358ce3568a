"""The few example types every dataset is normalized to.

A *text* is either a plain string (standard form) or a list of chat messages
`[{"role": "user", "content": "..."}, ...]` (conversational form, rendered with the tokenizer's chat
template). Every example remembers where it came from (`source`, `row`) so that any later error can name
the file and row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]
Text = str | list[Message]


@dataclass
class PromptCompletion:
    """SFT example. For a multi-turn conversation `prompt` is `[]`-or-leading-turns and every assistant
    turn in `completion` counts toward the loss."""

    prompt: Text
    completion: Text
    source: str = ""
    row: int = -1


@dataclass
class PreferencePair:
    """A prompt with a preferred (`chosen`) and a dispreferred (`rejected`) completion."""

    prompt: Text
    chosen: Text
    rejected: Text
    score_chosen: float | None = None
    score_rejected: float | None = None
    margin: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    row: int = -1


@dataclass
class UnpairedExample:
    """A prompt with one completion labelled desirable (True) or undesirable (False), as in KTO."""

    prompt: Text
    completion: Text
    label: bool
    source: str = ""
    row: int = -1


@dataclass
class RankedList:
    """A prompt with K completions; `ranks[i]` is completion i's rank (0 = best), `scores[i]` its score."""

    prompt: Text
    completions: list[Text]
    ranks: list[int] | None = None
    scores: list[float] | None = None
    source: str = ""
    row: int = -1


@dataclass
class AttributeExample:
    """A prompt and one response with per-attribute scores (HelpSteer2-style)."""

    prompt: Text
    completion: Text
    scores: dict[str, float]
    source: str = ""
    row: int = -1


@dataclass
class StepLabeled:
    """A prompt and a solution as steps, each labelled correct (True) or not: process supervision
    (TRL stepwise supervision; Math-Shepherd, PRM800K)."""

    prompt: str
    steps: list[str]
    labels: list[bool]
    source: str = ""
    row: int = -1


@dataclass
class PromptOnly:
    """A prompt for online RL; `extra` keeps every other column (answers, tests) for reward functions."""

    prompt: Text
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    row: int = -1


Example = (PromptCompletion | PreferencePair | UnpairedExample | RankedList | AttributeExample | StepLabeled
           | PromptOnly)
