"""resolve_names: `lab:` names in a config become local paths."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alignlab.config import DataConfig, ModelConfig
from alignlab.errors import ConfigError
from alignlab.lab import LAB_DATASETS, LAB_MODELS, known_names, resolve_names


@dataclass
class _Block:
    reward_model: str = "lab:tiny"
    names: list[str] = field(default_factory=lambda: ["lab:sentiment-prompts", "plain"])


@dataclass
class _Cfg:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: _Block = field(default_factory=_Block)
    note: str = "not a lab name"
    steps: int = 3


def test_resolves_models_and_datasets(tiny_path):
    cfg = _Cfg()
    assert resolve_names(cfg) is cfg
    assert cfg.model.path == str(tiny_path) == cfg.method.reward_model
    data = Path(cfg.data.dataset)
    assert data.suffix == ".jsonl" and data.exists() and "sentiment-sft" in data.name
    assert Path(cfg.method.names[0]).exists() and cfg.method.names[1] == "plain"
    assert cfg.note == "not a lab name" and cfg.steps == 3
    assert resolve_names(cfg) == cfg  # idempotent


def test_unknown_lab_name_lists_known():
    cfg = _Cfg(data=DataConfig(dataset="lab:imdb"), model=ModelConfig(path="/some/model"))
    with pytest.raises(ConfigError, match="lab:imdb") as info:
        resolve_names(cfg)
    assert "lab:tiny" in str(info.value) and "lab:sentiment-sft" in str(info.value)


def test_registry():
    assert set(LAB_MODELS) == {"tiny"} and "arithmetic-prompts" in LAB_DATASETS
    assert known_names()[0] == "lab:tiny"
