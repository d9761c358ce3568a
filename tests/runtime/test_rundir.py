"""RunDir (alignlab/runtime/rundir.py): only run.log on creation, config round trip, metrics sinks, resume."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest
import torch

from alignlab.config import LogConfig, OptimConfig, load_yaml
from alignlab.errors import ConfigError
from alignlab.runtime import RunDir


@dataclass
class Cfg:
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    seed: int = 0


def test_creation_makes_only_run_log(tmp_path):
    path = tmp_path / "run"
    with RunDir(path):
        logging.getLogger("alignlab").info("hello from the test")
        assert [p.name for p in path.iterdir()] == ["run.log"]
    assert "hello from the test" in (path / "run.log").read_text()
    assert RunDir(path).metrics() == []


def test_config_round_trip_and_echo(tmp_path, capsys):
    cfg = Cfg(optim=OptimConfig(lr=3e-4, adam_betas=(0.8, 0.95), scheduler="linear"), seed=5)
    with RunDir(tmp_path) as run:
        out = run.save_config(cfg)
    assert out == tmp_path / "config.yaml"
    assert load_yaml(Cfg, out) == cfg
    assert "lr: 0.0003" in capsys.readouterr().out
    assert "resolved config" in (tmp_path / "run.log").read_text()


def test_metrics_jsonl_and_tensorboard(tmp_path):
    with RunDir(tmp_path) as run:
        values = run.log(1, {"train/loss": torch.tensor(2.5), "lr": 1e-3, "step": 99, "epoch": 0,
                             "grad_norm": torch.tensor([0.5], dtype=torch.bfloat16)})
        run.log(2, {"train/loss": torch.tensor(1.5), "lr": 1e-3})
        assert values == {"train/loss": 2.5, "lr": 1e-3, "epoch": 0, "grad_norm": 0.5}
        assert run.metrics() == [{"step": 1, **values}, {"step": 2, "train/loss": 1.5, "lr": 1e-3}]
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 2.5), (2, 1.5)]


def test_tensorboard_can_be_disabled_and_bad_metrics_rejected(tmp_path):
    with RunDir(tmp_path, tensorboard=False) as run:
        run.log(1, {"loss": 1.0})
        with pytest.raises(ValueError, match="'v' must be a scalar"):
            run.log(2, {"v": torch.ones(2)})
        with pytest.raises(TypeError, match="'s' must be a number"):
            run.log(2, {"s": "text"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "run.log"]


def test_wandb_without_package_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match="pip install"):
        RunDir(tmp_path / "w", wandb=True)


def test_resume_truncates_metrics_to_match_uninterrupted_run(tmp_path):
    def metrics(step):
        return {"loss": 1.0 / step}

    with RunDir(tmp_path / "full", tensorboard=False) as run:
        for step in range(1, 7):
            run.log(step, metrics(step))
    with RunDir(tmp_path / "resumed") as run:  # crashed after logging step 5; last checkpoint at 3
        for step in range(1, 6):
            run.log(step, metrics(step))
    with RunDir(tmp_path / "resumed") as run:
        run.truncate_metrics(3)
        assert [m["step"] for m in run.metrics()] == [1, 2, 3]
        for step in range(4, 7):
            run.log(step, metrics(step))
    full, resumed = (tmp_path / d / "metrics.jsonl" for d in ("full", "resumed"))
    assert resumed.read_text() == full.read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "resumed" / "tensorboard"))  # both event files; purge drops 4, 5
    acc.Reload()
    want = [(s, pytest.approx(1 / s)) for s in range(1, 7)]
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == want


def test_fresh_run_refuses_an_existing_run_and_resume_without_checkpoint_starts_over(tmp_path):
    from alignlab.errors import ConfigError
    from alignlab.runtime import resume_point

    run = RunDir(tmp_path)
    assert resume_point(run, False) is None  # empty directory: fine
    run.log(1, {"loss": 1.0})
    with pytest.raises(ConfigError, match="already holds a run"):
        resume_point(run, False)
    assert resume_point(run, True) is None and run.metrics() == []  # nothing to resume: metrics reset
    run.close()


def test_disabled_rundir_writes_nothing(tmp_path):
    run = RunDir(tmp_path / "rank1", enabled=False)
    run.log(1, {"loss": 1.0})
    run.close()
    assert not (tmp_path / "rank1").exists()
