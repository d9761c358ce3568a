"""Tests for alignlab/models/reference.py: frozen copy, LoRA base, precomputed table + cache, TR-DPO updates."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.models import apply_lora, compute_logprobs
from alignlab.models.reference import (
    LiveReference,
    PrecomputedReference,
    cache_key,
    cached_reference_logprobs,
    frozen_copy,
    precompute_logprobs,
    save_reference_weights,
    sync_reference,
    weights_hash,
)

V = 61


def llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))


def pair_batch(index=(0, 1)) -> dict:
    """2B rows (chosen then rejected) with `index (B,)`."""
    n = len(index)
    ids = torch.randint(0, V, (2 * n, 8), generator=torch.Generator().manual_seed(sum(index)))
    resp = torch.zeros(2 * n, 8, dtype=torch.bool)
    resp[:, 3:] = True
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "response_mask": resp,
            "index": torch.tensor(index)}


def test_frozen_copy_is_equal_frozen_and_in_eval_mode():
    model = llama().train()
    ref = frozen_copy(model)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in model.parameters()) and model.training
    assert weights_hash(ref) == weights_hash(model)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert weights_hash(ref) != weights_hash(model)  # a copy, not a view


def test_lora_base_reference_ignores_adapters_and_restores_train_mode():
    base = llama()
    expected = compute_logprobs(llama(), pair_batch()).seq_logprobs
    policy = apply_lora(base, r=4, alpha=8).train()
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    got = LiveReference(policy, adapters_off=True).seq_logprobs(pair_batch())
    torch.testing.assert_close(got, expected)
    assert policy.training and not torch.allclose(compute_logprobs(policy, pair_batch()).seq_logprobs, expected)
    with pytest.raises(ValueError, match="peft"):
        LiveReference(llama(), adapters_off=True)


def test_precomputed_table_matches_live_reference_in_batch_order():
    live = LiveReference(frozen_copy(llama()))
    batches = [pair_batch((2, 0)), pair_batch((1,))]
    table = precompute_logprobs(live, batches, 4, progress=False)
    assert table.shape == (4, 2) and torch.isnan(table[3]).all()
    pre = PrecomputedReference(table)
    for b in batches:
        torch.testing.assert_close(pre.seq_logprobs(b), live.seq_logprobs(b))


def test_cache_is_reused_and_every_input_changes_the_key(tmp_path, tiny_tokenizer, caplog):
    model = llama()
    feats = [{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4], "row": 1, "index": 0}]
    key = cache_key(model, feats, tiny_tokenizer, max_length=32)
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(2.0).view(1, 2)

    with caplog.at_level(logging.INFO, logger="alignlab"):
        t1, path1, hit1 = cached_reference_logprobs(compute, key=key, cache_dir=tmp_path)
        t2, path2, hit2 = cached_reference_logprobs(compute, key=key, cache_dir=tmp_path)
    assert (hit1, hit2, len(calls), path1) == (False, True, 1, path2) and torch.equal(t1, t2)
    assert "reusing the cache" in caplog.text
    changed = [cache_key(llama(seed=1), feats, tiny_tokenizer, max_length=32),  # other weights
               cache_key(model, [{**feats[0], "chosen_ids": [5]}], tiny_tokenizer, max_length=32),  # other data
               cache_key(model, feats, tiny_tokenizer, max_length=64)]  # other settings
    assert key not in changed and len(set(changed)) == 3
    assert cache_key(model, [{**feats[0], "row": 9}], tiny_tokenizer, max_length=32) == key  # rows only name errors


def test_sync_reference_soft_and_hard():
    policy, ref = llama(0), frozen_copy(llama(1))
    p0 = {n: p.clone() for n, p in policy.named_parameters()}
    r0 = {n: p.clone() for n, p in ref.named_parameters()}
    sync_reference(ref, policy, 0.25)  # ref <- 0.25 policy + 0.75 ref
    for n, p in ref.named_parameters():
        torch.testing.assert_close(p, 0.25 * p0[n] + 0.75 * r0[n])
    sync_reference(ref, policy, 1.0)
    assert weights_hash(ref) == weights_hash(policy)
    with pytest.raises(ValueError):
        sync_reference(ref, policy, 0.0)


def test_save_reference_weights_keeps_only_checkpointed_steps(tmp_path):
    model = llama()
    for step in (2, 4, 6):
        save_reference_weights(model, tmp_path, step, keep={4})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-4.safetensors", "step-6.safetensors"]
