"""Tests for compute_token_kl / logprobs_and_token_kl: chunked KL(ref || policy) against the full-logits version."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.models import apply_lora, compute_logprobs
from alignlab.models.token_kl import compute_token_kl, logprobs_and_token_kl

V = 97
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


def llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**SMALL, attn_implementation="sdpa"))


def batch(lengths=(11, 7, 9)) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (len(lengths), max(lengths)), generator=g)
    attn = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for b, n in enumerate(lengths):
        attn[b, :n] = 1
    resp = attn.bool().clone()
    resp[:, :3] = False
    return dict(input_ids=ids, attention_mask=attn, response_mask=resp)


def naive_kl(policy, reference, b) -> torch.Tensor:
    """sum_v q (log q - log p) from full (B, T, V) logits, aligned with input_ids, 0 where not counted."""
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    logp = policy(**kw).logits[:, :-1].float().log_softmax(-1)
    with torch.no_grad():
        logq = reference(**kw).logits[:, :-1].float().log_softmax(-1)
    kl = torch.nn.functional.pad((logq.exp() * (logq - logp)).sum(-1), (1, 0))
    mask = b["response_mask"].clone()
    mask[:, 0] = False
    return torch.where(mask, kl, 0.0)


def test_token_kl_matches_full_logits_values_and_policy_gradient():
    policy, reference = llama(0), llama(1)
    b = batch()
    expected = naive_kl(policy, reference, b)
    policy.zero_grad()
    expected.sum().backward()
    want = {n: p.grad.clone() for n, p in policy.named_parameters()}
    policy.zero_grad()
    got = compute_token_kl(policy, reference, b, chunk_size=5)  # several chunks
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert got[~b["response_mask"]].abs().max() == 0 and (got[b["response_mask"]] > 0).all()
    got.sum().backward()
    for name, p in policy.named_parameters():
        torch.testing.assert_close(p.grad, want[name], atol=1e-5, rtol=1e-4, msg=name)
    assert all(p.grad is None for p in reference.parameters())  # the reference gets no gradient


def test_kl_is_zero_for_identical_models_and_logprobs_match_compute_logprobs():
    policy = llama(0)
    b = batch()
    lp, kl = logprobs_and_token_kl(policy, llama(0), b)
    assert kl.abs().max() < 1e-5
    ref = compute_logprobs(policy, b)
    torch.testing.assert_close(lp.logprobs, ref.logprobs)
    torch.testing.assert_close(lp.seq_logprobs, ref.seq_logprobs)


def test_lora_base_reference_through_disable_adapter():
    base = llama(0)
    frozen = llama(0)
    policy = apply_lora(base, r=4, alpha=8)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # adapters that change the model
    b = batch()
    got = compute_token_kl(policy, policy, b, reference_context=policy.disable_adapter)
    torch.testing.assert_close(got, naive_kl(policy, frozen, b).detach(), atol=1e-5, rtol=1e-4)
    assert got.sum() > 0
