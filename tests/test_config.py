import pytest

from alignlab.config import from_dict, load_yaml, parse, to_yaml
from alignlab.errors import ConfigError
from alignlab.recipes.sft import SFTConfig


def test_yaml_then_dotted_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 1\n  weight_decay: 1e-2\n  max_steps: 7\ndata:\n  max_length: 64\nseed: 3\n")
    cfg = parse(SFTConfig, ["--config", str(path), "--optim.lr", "0.5", "--data.packing", "True"])
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)  # override beats file
    assert cfg.optim.weight_decay == 0.01  # YAML 1.1 reads 1e-2 as a string; it is still a number
    assert cfg.optim.max_steps == 7 and cfg.data.max_length == 64 and cfg.seed == 3  # file beats default
    assert cfg.data.packing is True


def test_required_aliases():
    cfg = parse(SFTConfig, ["--model", "m", "--dataset", "d.jsonl", "--output-dir", "o", "--max-steps", "5",
                            "--seed", "9"])
    assert (cfg.model.path, cfg.data.dataset, cfg.log.output_dir, cfg.optim.max_steps, cfg.seed) == (
        "m", "d.jsonl", "o", 5, 9)


def test_unknown_yaml_key_names_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'optim.learning_rate'"):
        load_yaml(SFTConfig, path)


def test_wrong_type_in_yaml_names_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  max_steps: many\n")
    with pytest.raises(ConfigError, match=r"key 'optim.max_steps' expects int, got 'many'"):
        load_yaml(SFTConfig, path)


def test_wrong_type_on_command_line_names_key(capsys):
    with pytest.raises(SystemExit):
        parse(SFTConfig, ["--optim.lr", "fast"])
    assert "--optim.lr" in capsys.readouterr().err


def test_unknown_option_on_command_line(capsys):
    with pytest.raises(SystemExit):
        parse(SFTConfig, ["--optim.learning-rate", "0.1"])
    assert "Unrecognized" in capsys.readouterr().err


def test_invalid_value_is_rejected_not_repaired():
    with pytest.raises(ConfigError, match="optim.batch_size must be >= 1"):
        from_dict(SFTConfig, {"optim": {"batch_size": 0}})


def test_help_comes_from_field_docstrings(capsys):
    with pytest.raises(SystemExit):
        parse(SFTConfig, ["--help"])
    out = capsys.readouterr().out
    assert "Peak learning rate (AdamW)." in out and "--max-steps" in out


def test_yaml_round_trip(tmp_path):
    cfg = parse(SFTConfig, ["--optim.adam-betas", "0.8", "0.9", "--data.columns", "prompt", "question"])
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    assert load_yaml(SFTConfig, path) == cfg
