"""Checkpoints (alignlab/runtime/checkpoint.py): exact resume, crash safety, rotation, plain load."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.config import OptimConfig
from alignlab.runtime import (
    latest_checkpoint,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    save_checkpoint,
    seed_everything,
)

OPTIM = OptimConfig(lr=1e-2, weight_decay=0.1, warmup_steps=2, scheduler="cosine", max_steps=10)


def setup(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    optimizer = make_optimizer(model, OPTIM)
    return model, optimizer, make_scheduler(optimizer, OPTIM)


def train_step(model, optimizer, scheduler):
    ids = torch.randint(0, model.config.vocab_size, (2, 8))  # draws from the torch RNG, so it must resume too
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def continuation(model, optimizer, scheduler):
    """Everything that must be identical after resuming: next random numbers, next step's weights and lr."""
    draws = (random.random(), float(np.random.rand()))
    train_step(model, optimizer, scheduler)
    return draws, {k: v.clone() for k, v in model.state_dict().items()}, scheduler.get_last_lr()


def test_round_trip_resumes_bit_for_bit(tmp_path, tiny_model_dir, tiny_tokenizer):
    seed_everything(0)
    model, optimizer, scheduler = setup(tiny_model_dir)
    for _ in range(3):
        train_step(model, optimizer, scheduler)
    path = save_checkpoint(tmp_path, 3, model=model, tokenizer=tiny_tokenizer, optimizer=optimizer,
                           scheduler=scheduler, state={"epoch": 0, "batch_index": 3})
    assert path == tmp_path / "checkpoints" / "step-3"
    assert latest_checkpoint(tmp_path) == path
    draws, weights, lr = continuation(model, optimizer, scheduler)

    seed_everything(123)  # a fresh process with different RNG state and untrained weights
    model2, optimizer2, scheduler2 = setup(tiny_model_dir)
    state = load_checkpoint(path, model=model2, optimizer=optimizer2, scheduler=scheduler2)
    assert state == {"step": 3, "epoch": 0, "batch_index": 3}
    draws2, weights2, lr2 = continuation(model2, optimizer2, scheduler2)
    assert draws2 == draws and lr2 == lr
    assert weights2.keys() == weights.keys()
    assert all(torch.equal(weights[k], weights2[k]) for k in weights)


def test_checkpoint_loads_with_plain_transformers(tmp_path, tiny_model_dir, tiny_tokenizer):
    model, optimizer, scheduler = setup(tiny_model_dir)
    train_step(model, optimizer, scheduler)
    path = save_checkpoint(tmp_path, 1, model=model, tokenizer=tiny_tokenizer, optimizer=optimizer,
                           scheduler=scheduler)
    plain = AutoModelForCausalLM.from_pretrained(path)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in model.state_dict().items())
    assert AutoTokenizer.from_pretrained(path).encode("the movie") == tiny_tokenizer.encode("the movie")
    assert sorted(p.name for p in path.glob("*.p[ty]")) == ["optimizer.pt", "rng.pt", "scheduler.pt"]


def test_crash_during_save_keeps_previous_latest(tmp_path, tiny_model_dir, monkeypatch):
    model, optimizer, scheduler = setup(tiny_model_dir)
    first = save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=scheduler)
    train_step(model, optimizer, scheduler)

    def boom():
        raise OSError("disk full")

    for step in (2, 1):  # a new step, and replacing the existing step-1
        monkeypatch.setattr(optimizer, "state_dict", boom)
        with pytest.raises(OSError, match="disk full"):
            save_checkpoint(tmp_path, step, model=model, optimizer=optimizer, scheduler=scheduler)
        monkeypatch.undo()
        assert latest_checkpoint(tmp_path) == first
        assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-1"]

    # A hard kill leaves a temp dir, or a step dir without its marker: both are ignored, temp dirs removed.
    (tmp_path / "checkpoints" / ".tmp-step-7").mkdir()
    (tmp_path / "checkpoints" / ".tmp-step-7" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "checkpoints" / "step-9").mkdir()
    assert latest_checkpoint(tmp_path / "checkpoints") == first
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-1", "step-9"]
    # Killed between moving the old step-1 aside and moving its replacement in: the old one comes back.
    os.rename(first, first.with_name(".old-step-1"))
    assert latest_checkpoint(tmp_path) == first and (first / "state.json").is_file()


def test_replacing_a_step_and_rotation(tmp_path, tiny_model_dir):
    model, optimizer, scheduler = setup(tiny_model_dir)
    ckpts = tmp_path / "checkpoints"

    def save(step, keep=2, **state):
        return save_checkpoint(tmp_path, step, model=model, optimizer=optimizer, scheduler=scheduler,
                               state=state, keep=keep)

    for step in range(1, 5):
        save(step)
    assert sorted(os.listdir(ckpts)) == ["step-3", "step-4"]
    save(4, note="again")
    assert load_checkpoint(ckpts / "step-4", model=model)["note"] == "again"
    assert sorted(os.listdir(ckpts)) == ["step-3", "step-4"]
    save(5, keep=0)
    save(6, keep=0)
    assert sorted(os.listdir(ckpts)) == ["step-3", "step-4", "step-5", "step-6"]
    save(4, keep=3)  # resumed from an earlier step: the abandoned later checkpoints go
    assert sorted(os.listdir(ckpts)) == ["step-3", "step-4"]
    assert latest_checkpoint(tmp_path) == ckpts / "step-4"
    assert latest_checkpoint(ckpts / "step-3") == ckpts / "step-3"
    assert latest_checkpoint(tmp_path / "nothing-here") is None


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_adapter_round_trip(tmp_path, tiny_model_dir):
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    seed_everything(0)
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora)
    optimizer = make_optimizer(model, OPTIM)
    scheduler = make_scheduler(optimizer, OPTIM)
    train_step(model, optimizer, scheduler)
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=scheduler)
    assert (path / "adapter_model.safetensors").is_file()

    seed_everything(1)
    fresh = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora)
    fresh_opt = make_optimizer(fresh, OPTIM)
    load_checkpoint(path, model=fresh, optimizer=fresh_opt, scheduler=make_scheduler(fresh_opt, OPTIM))
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in fresh.state_dict().items())


def test_tied_embeddings_restore_through_their_twin(tmp_path, tiny_model_dir):
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = save_checkpoint(tmp_path, 1, model=model)
    torch.manual_seed(1)
    fresh = LlamaForCausalLM(config)
    load_checkpoint(path, model=fresh)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_save_step_checks_finite_then_prepares_then_writes(tmp_path, tiny_model_dir):
    """Order: the finite check first (a NaN step writes nothing, not even what `prepare` would), then the
    `prepare` callables (their entries land in state.json), the meter's interval, then the checkpoint."""
    from alignlab.errors import NonFiniteLossError
    from alignlab.runtime import FiniteGuard, Meter, save_step

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    meter, calls = Meter("cpu"), []
    meter.add({"loss": torch.tensor(2.0)})

    def companion():
        calls.append(latest_checkpoint(tmp_path))  # runs before this step's checkpoint exists
        return {"companion": "written"}

    guard = FiniteGuard()
    guard.record(1, torch.tensor(float("nan")), [7])
    with pytest.raises(NonFiniteLossError, match=r"step 1; batch rows: \[7\]"):
        save_step(tmp_path, 1, guard=guard, meter=meter, state={"step": 1}, write=True, keep=2, prepare=[companion],
                  model=model)
    assert calls == [] and latest_checkpoint(tmp_path) is None
    guard.record(2, torch.tensor(1.0), [8])
    state = {"epoch": 0}
    save_step(tmp_path, 2, guard=guard, meter=meter, state=state, write=True, keep=2, prepare=[companion, lambda: None],
              model=model)
    assert calls == [None]
    saved = load_checkpoint(tmp_path / "checkpoints" / "step-2", model=model, restore_rng=False)
    assert saved["companion"] == "written" and saved["meter"] == {"sums": {"loss": 2.0}, "steps": 1}
    save_step(tmp_path, 3, guard=guard, meter=meter, state=dict(state), write=False, keep=2, model=model)
    assert latest_checkpoint(tmp_path).name == "step-2"  # a process that does not write leaves no files
