"""Tests for alignlab/models/load.py on the saved tiny Llama fixture (`tiny_model_dir`)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.config import ModelConfig
from alignlab.errors import ConfigError
from alignlab.models import (
    apply_lora,
    autocast_context,
    compute_logprobs,
    is_lora,
    load_model,
    load_tokenizer,
    merge_lora,
    model_from_config,
    save_model,
)


def batch_for(tok, texts=("the movie was great", "what is 12+30? the answer is 42")) -> dict:
    enc = tok(list(texts), return_tensors="pt", padding=True)
    resp = enc["attention_mask"].bool().clone()
    resp[:, :2] = False
    return dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], response_mask=resp)


def test_load_tokenizer_and_model(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    assert tok.pad_token is not None and tok.padding_side == "right"
    model = load_model(tiny_model_dir)
    assert model.dtype == torch.float32 and model.config._attn_implementation == "sdpa"
    assert load_model(str(tiny_model_dir), dtype="bfloat16").dtype == torch.bfloat16


def test_tokenizer_without_pad_uses_eos(tiny_tokenizer, tmp_path, caplog):
    tiny_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    with caplog.at_level("INFO", logger="alignlab.models.load"):
        loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token == loaded.eos_token and "no pad token" in caplog.text


@pytest.mark.parametrize("path", ["/no/such/model/dir", "./missing-model", "lab:tiny"])
def test_bad_paths_raise_config_error_naming_them(path):
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        load_model(path)
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        load_tokenizer(path)


def test_gradient_checkpointing_gives_identical_loss_and_grads(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    batch = batch_for(tok)
    results = []
    for flag in (False, True):
        model = load_model(tiny_model_dir, gradient_checkpointing=flag).train()
        assert model.is_activation_checkpointing == flag and model.config.use_cache == (not flag)
        loss = -compute_logprobs(model, batch).seq_logprobs.sum()
        loss.backward()
        results.append((loss.detach(), model.model.layers[0].mlp.up_proj.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], atol=0, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)


def test_lora_merge_save_roundtrip(tiny_model_dir, tmp_path):
    """LoRA: only adapters train; save_model writes merged safetensors that plain transformers loads."""
    tok = load_tokenizer(tiny_model_dir)
    model = apply_lora(load_model(tiny_model_dir), r=4, alpha=8, dropout=0.0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)  # B starts at 0; make the adapters change the outputs
    batch = batch_for(tok)
    save_model(model, tok, tmp_path / "out")
    assert is_lora(model), "save_model must not strip the adapters of the model being trained"
    assert list((tmp_path / "out").glob("*.safetensors"))
    merged = merge_lora(model).eval()
    assert not is_lora(merged)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        a = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        base = load_model(tiny_model_dir)(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, base, atol=1e-3), "the merged adapters should change the logits"
    prompt = batch["input_ids"][:1, :4]
    gen = plain.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > prompt.shape[1]
    assert load_tokenizer(tmp_path / "out").pad_token == tok.pad_token


def test_model_from_config_applies_every_field(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir), dtype="float32", gradient_checkpointing=True, lora_r=2,
                      lora_alpha=4.0, lora_target_modules="q_proj, v_proj")
    model = model_from_config(cfg, tokenizer=load_tokenizer(tiny_model_dir))
    assert is_lora(model) and model.peft_config["default"].r == 2
    assert set(model.peft_config["default"].target_modules) == {"q_proj", "v_proj"}
    assert model.get_base_model().is_activation_checkpointing
    plain = model_from_config(ModelConfig(path=str(tiny_model_dir), dtype="bfloat16"))
    assert not is_lora(plain) and plain.dtype == torch.bfloat16


def test_autocast_context():
    assert isinstance(autocast_context("no", "cpu"), contextlib.nullcontext)
    with autocast_context("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ConfigError, match="GPU"):
        autocast_context("fp16", "cpu")
