"""Tests for alignlab/models/last_layer.py: the last MLP run only where the output is read changes nothing read."""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from alignlab.models import last_layer
from alignlab.models.last_layer import last_mlp_at

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, pad_token_id=0)


def llama(cls=LlamaForCausalLM, seed: int = 0):
    torch.manual_seed(seed)
    return cls(LlamaConfig(**SMALL, attn_implementation="sdpa")).train()


def hidden(model, ids, positions=None):
    with last_mlp_at(model, positions):
        return model.model(input_ids=ids, use_cache=False)[0]


def test_read_positions_equal_the_full_forward_values_and_grads():
    model = llama()
    ids = torch.randint(1, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    read = torch.tensor([3, 8, 9 + 0, 9 + 5])  # flat b * T + t
    full = hidden(model, ids)
    w = torch.randn(full.shape[-1])
    (full.reshape(18, -1)[read] @ w).sum().backward()
    g_full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    part = hidden(model, ids, read)
    (part.reshape(18, -1)[read] @ w).sum().backward()
    g_part = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(part.reshape(18, -1)[read], full.reshape(18, -1)[read], atol=1e-5, rtol=0)
    others = torch.ones(18, dtype=torch.bool)
    others[read] = False
    assert not torch.allclose(part.reshape(18, -1)[others], full.reshape(18, -1)[others])  # really skipped there
    assert g_part.keys() == g_full.keys()
    for name in g_full:
        torch.testing.assert_close(g_part[name], g_full[name], atol=1e-5, rtol=1e-4, msg=name)


class MixingMLP(nn.Module):
    """Not position-wise: adds the mean over positions (the check must catch it)."""

    def __init__(self, mlp):
        super().__init__()
        self.inner = mlp

    def forward(self, x):
        return self.inner(x) + x.mean(1, keepdim=True)


def test_a_last_mlp_that_mixes_positions_runs_in_full():
    model = llama(LlamaForSequenceClassification)
    model.model.layers[-1].mlp = MixingMLP(model.model.layers[-1].mlp)
    last_layer._VERIFIED.pop(LlamaForSequenceClassification, None)
    ids = torch.randint(1, 97, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, part = hidden(model, ids), hidden(model, ids, torch.tensor([2, 5]))
    assert last_layer._VERIFIED[LlamaForSequenceClassification] is False
    torch.testing.assert_close(part, full)  # every position computed: the same everywhere
    last_layer._VERIFIED.pop(LlamaForSequenceClassification)


def test_no_restriction_under_gradient_checkpointing_or_without_positions():
    model = llama()
    model.activation_checkpointing_enable()
    ids = torch.randint(1, 97, (1, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hidden(model, ids, torch.tensor([1])), hidden(model, ids))
    model.activation_checkpointing_disable()
    with torch.no_grad():
        torch.testing.assert_close(hidden(model, ids, None), hidden(model, ids))
