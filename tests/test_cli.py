"""The command line: dispatch, help, errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "alignlab.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_top_level_help_lists_commands():
    proc = run("--help")
    assert proc.returncode == 0 and "sft" in proc.stdout and "demo" in proc.stdout


def test_unknown_command():
    proc = run("dance")
    assert proc.returncode == 2 and "unknown command 'dance'" in proc.stderr


def test_command_help_shows_field_docs():
    proc = run("sft", "--help")
    assert proc.returncode == 0
    assert "--model" in proc.stdout and "Local Hugging Face model directory" in proc.stdout


def test_missing_dataset_file_is_one_clear_line(tiny_model_dir, tmp_path):
    proc = run("sft", "--model", tiny_model_dir, "--dataset", tmp_path / "nope.jsonl", "--output-dir", tmp_path / "o")
    assert proc.returncode == 1
    assert "nope.jsonl" in proc.stderr and "Traceback" not in proc.stderr


def test_debug_shows_traceback(tiny_model_dir, tmp_path):
    proc = run("sft", "--model", tiny_model_dir, "--dataset", tmp_path / "nope.jsonl", "--output-dir",
               tmp_path / "o", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_bad_config_file_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lr: 1e-3\n  momentum: 0.9\n")
    proc = run("sft", "--config", cfg)
    assert proc.returncode == 1 and "unknown key 'optim.momentum'" in proc.stderr
