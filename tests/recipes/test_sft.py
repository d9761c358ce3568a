"""SFT recipe: learning, saved model, LoRA, packing, bf16, resume, signals, bad input, NaN."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.config import DataConfig, LogConfig, ModelConfig, OptimConfig
from alignlab.errors import NonFiniteLossError
from alignlab.recipes.sft import SFTConfig, main


def config(model_dir, data, out, **over) -> SFTConfig:
    cfg = SFTConfig(
        model=ModelConfig(path=str(model_dir)),
        data=DataConfig(dataset=str(data), max_length=32, eval_fraction=0.1),
        optim=OptimConfig(lr=3e-3, batch_size=16, max_steps=40, warmup_steps=2),
        log=LogConfig(output_dir=str(out), log_every=5, eval_every=20, save_every=0, progress=False,
                      tensorboard=False),
    )
    for key, value in over.items():
        block, _, field = key.partition("__")
        setattr(getattr(cfg, block), field, value) if field else setattr(cfg, block, value)
    return cfg


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sft_lowers_heldout_loss_and_saves_loadable_model(tiny_model_dir, sft_data, tmp_path):
    out = tmp_path / "run"
    main(config(tiny_model_dir, sft_data, out, optim__max_steps=80, optim__lr=1e-2))
    evals = [m["eval_loss"] for m in metrics(out) if "eval_loss" in m]
    assert evals[0] > 2.0 and evals[-1] < 0.5 * evals[0], evals
    assert (out / "config.yaml").exists() and (out / "checkpoints").is_dir()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("the film was great and", return_tensors="pt")["input_ids"]
    gen = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(gen[0, ids.shape[1]:]).startswith(" it was p")  # learned the pattern


def test_sft_with_lora_packing_and_bf16(tiny_model_dir, sft_data, tmp_path):
    out = tmp_path / "run"
    cfg = config(tiny_model_dir, sft_data, out, model__lora_r=8, model__mixed_precision="bf16",
                 data__packing=True, optim__max_steps=15, optim__lr=1e-2)
    main(cfg)
    evals = [m["eval_loss"] for m in metrics(out) if "eval_loss" in m]
    assert all(map(torch.isfinite, torch.tensor(evals))) and evals[-1] < evals[0]
    merged = AutoModelForCausalLM.from_pretrained(out)  # LoRA merged on export: a plain model
    assert not any("lora" in name for name, _ in merged.named_parameters())


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "alignlab.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def cli_args(model_dir, data, out, steps):
    return ["sft", "--model", model_dir, "--dataset", data, "--output-dir", out, "--max-steps", steps,
            "--data.max-length", 32, "--optim.batch-size", 8, "--optim.lr", 1e-3, "--log.log-every", 1,
            "--log.save-every", 5, "--log.eval-every", 10, "--log.progress", "False", "--log.tensorboard", "False"]


def wait_for_step(out, step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        path = out / "metrics.jsonl"
        if path.exists() and any(json.loads(x).get("step", 0) >= step for x in path.read_text().splitlines()
                                 if x.endswith("}")):
            return
        time.sleep(0.05)
    raise AssertionError(f"run did not reach step {step}: {proc.poll()} {proc.stderr.read() if proc.stderr else ''}")


def comparable(rows):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def test_resume_after_sigkill_is_bit_exact(tiny_model_dir, sft_data, tmp_path):
    steps = 120
    full = tmp_path / "full"
    assert cli(*cli_args(tiny_model_dir, sft_data, full, steps)).wait() == 0
    killed = tmp_path / "killed"
    proc = cli(*cli_args(tiny_model_dir, sft_data, killed, steps))
    wait_for_step(killed, 12, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert max(json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()) < steps
    resumed = cli(*cli_args(tiny_model_dir, sft_data, killed, steps), "--resume", "True")
    assert resumed.wait() == 0, resumed.stderr.read()
    assert comparable(metrics(killed)) == comparable(metrics(full))


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_model_dir, sft_data, tmp_path):
    out = tmp_path / "run"
    proc = cli(*cli_args(tiny_model_dir, sft_data, out, 100000))
    wait_for_step(out, 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    last = metrics(out)[-1]["step"]
    assert (out / "checkpoints" / f"step-{last}" / "state.json").exists()
    assert last < 100000


def test_bad_input_stops_before_training_and_writes_only_the_log(tiny_model_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": \n')
    out = tmp_path / "run"
    proc = cli("sft", "--model", tiny_model_dir, "--dataset", data, "--output-dir", out)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "bad.jsonl" in err and "line 2" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["run.log"]


def test_empty_completion_names_row_and_field(tiny_model_dir, tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": ""}\n')
    proc = cli("sft", "--model", tiny_model_dir, "--dataset", data, "--output-dir", tmp_path / "run")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "empty.jsonl" in err and "row 2" in err and "completion" in err


def test_nan_loss_stops_with_step_and_rows_and_no_checkpoint(tiny_model_dir, sft_data, tmp_path):
    broken = tmp_path / "broken"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(broken)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"at step 1; batch rows: \[\d+"):
        main(config(broken, sft_data, out, log__save_every=1, data__eval_fraction=0.0))
    assert not (out / "checkpoints").exists() or not os.listdir(out / "checkpoints")
