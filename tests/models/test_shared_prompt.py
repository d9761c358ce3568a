"""Tests for alignlab/models/shared_prompt.py and `pair_logprobs`: a pair as one row (prompt + chosen + rejected)
scores exactly as the two rows prompt + chosen and prompt + rejected."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignlab.data import collate_preference, collate_shared_prompt, shared_prompt_length
from alignlab.models import apply_lora
from alignlab.models.logprobs import pair_logprobs
from alignlab.models.shared_prompt import (
    shared_prompt_mask,
    source_positions,
    split_pairs,
    supports_shared_prompt,
)
from alignlab.models.token_kl import logprobs_and_token_kl

V = 97
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


def llama(attn: str = "sdpa", seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**SMALL, attn_implementation=attn)).train()


def features(shapes=((4, 6, 3), (2, 3, 7), (5, 1, 2)), seed: int = 0) -> list[dict]:
    """Preference features with (prompt, chosen, rejected) lengths; one chosen token is not counted."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for row, (n_p, n_c, n_r) in enumerate(shapes):
        ids = torch.randint(1, V, (n_p + n_c + n_r,), generator=g).tolist()
        out.append({"prompt_ids": ids[:n_p], "chosen_ids": ids[n_p:n_p + n_c], "rejected_ids": ids[n_p + n_c:],
                    "chosen_mask": [i != 1 for i in range(n_c)], "rejected_mask": [True] * n_r, "row": row})
    return out


def test_collate_lays_out_prompt_chosen_rejected_with_restarting_positions():
    """Pair 0: prompt [a b], chosen [c d e], rejected [f]; positions 0 1 | 2 3 4 | 2; pair 1 is padded."""
    feats = [{"prompt_ids": [1, 2], "chosen_ids": [3, 4, 5], "rejected_ids": [6], "row": 7},
             {"prompt_ids": [8], "chosen_ids": [9], "rejected_ids": [10, 11], "row": 9}]
    b = collate_shared_prompt(feats, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [8, 9, 10, 11, 0, 0]]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 2] and b["position_ids"][1, :4].tolist() == [0, 1, 1, 2]
    assert b["segments"].tolist() == [[0, 0, 1, 1, 1, 2], [0, 1, 2, 2, -1, -1]]
    assert b["response_mask"].tolist() == [[False, False, True, True, True, True],
                                           [False, True, True, True, False, False]]
    assert b["attention_mask"].sum() == 10 and b["row_ids"].tolist() == [7, 9]
    assert [shared_prompt_length(f) for f in feats] == [6, 4]


def test_mask_hides_chosen_from_rejected_and_padding_from_everything():
    seg = torch.tensor([[0, 1, 1, 2, 2, -1]])
    m = shared_prompt_mask(seg)[0, 0]
    assert m[4].tolist() == [True, False, False, True, True, False]  # rejected: prompt + earlier rejected
    assert m[2].tolist() == [True, True, True, False, False, False]  # chosen: causal
    assert not m[:5, 5].any() and m[5, 5]  # no real token sees padding; a padding row is never empty
    additive = shared_prompt_mask(seg, torch.float32)[0, 0]
    assert (additive == 0).equal(m) and additive.min() == torch.finfo(torch.float32).min


def test_first_rejected_token_is_predicted_from_the_prompt_end():
    seg = torch.tensor([[0, 0, 1, 1, 1, 2, 2], [0, 1, 2, -1, -1, -1, -1]])
    targets = torch.tensor([2, 5, 6, 7 + 1, 7 + 2])
    assert source_positions(seg, targets).tolist() == [1, 1, 5, 7 + 0, 7 + 0]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_rows_equal_separate_rows_values_and_grads(attn):
    model, feats = llama(attn), features()
    sep_batch, shared_batch = collate_preference(feats, 0), collate_shared_prompt(feats, 0)
    results = []
    for batch in (sep_batch, shared_batch):
        model.zero_grad()
        lp = pair_logprobs(model, batch, with_entropy=True)
        (lp.seq_logprobs * torch.arange(1.0, 7.0)).sum().backward()  # a different weight per row
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((lp, grads))
    (sep, g_sep), (shared, g_shared) = results
    torch.testing.assert_close(shared.seq_logprobs, sep.seq_logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.mean_logprobs, sep.mean_logprobs, atol=1e-5, rtol=0)
    assert shared.num_tokens.tolist() == sep.num_tokens.tolist() == [5, 2, 1, 3, 7, 2]
    torch.testing.assert_close(shared.entropy.sum(-1), sep.entropy.sum(-1), atol=1e-5, rtol=0)
    for name in g_sep:
        torch.testing.assert_close(g_shared[name], g_sep[name], atol=1e-5, rtol=1e-4)


def test_full_logits_fallback_and_lora_on_the_head_match():
    """A head we cannot run chunked (LoRA on lm_head -> module path) and the full-logits path agree too."""
    feats = features(seed=3)
    sep_batch, shared_batch = collate_preference(feats, 0), collate_shared_prompt(feats, 0)
    lora = apply_lora(llama(), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "lm_head"])
    with torch.no_grad():
        torch.testing.assert_close(pair_logprobs(lora, shared_batch).seq_logprobs,
                                   pair_logprobs(lora, sep_batch).seq_logprobs, atol=1e-5, rtol=0)
        model = llama()
        model.get_output_embeddings = lambda: None  # force the full-logits fallback
        torch.testing.assert_close(pair_logprobs(model, shared_batch).seq_logprobs,
                                   pair_logprobs(model, sep_batch).seq_logprobs, atol=1e-5, rtol=0)


def test_token_kl_of_shared_rows_equals_separate_rows():
    policy, ref, feats = llama(seed=0), llama(seed=1).eval(), features(seed=4)
    out = [logprobs_and_token_kl(policy, ref, b) for b in (collate_preference(feats, 0),
                                                           collate_shared_prompt(feats, 0))]
    (lp_sep, kl_sep), (lp_sh, kl_sh) = out
    seg = collate_shared_prompt(feats, 0)["segments"]
    torch.testing.assert_close(split_pairs(kl_sh, seg).sum(-1), kl_sep.sum(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(split_pairs(lp_sh.logprobs, seg).sum(-1), lp_sep.seq_logprobs, atol=1e-5, rtol=0)


def test_empty_prompt_never_counts_the_first_rejected_token():
    feats = [{"prompt_ids": [], "chosen_ids": [3, 4], "rejected_ids": [5, 6, 7], "row": 0}]
    assert collate_shared_prompt(feats, 0)["response_mask"].tolist() == [[False, True, False, True, True]]


def test_supports_shared_prompt():
    assert supports_shared_prompt(llama("sdpa")) and supports_shared_prompt(llama("eager"))
    model = llama("sdpa")
    model.config._attn_implementation = "flash_attention_2"
    assert not supports_shared_prompt(model)
    from transformers import MistralConfig, MistralForCausalLM

    windowed = MistralForCausalLM(MistralConfig(**SMALL, sliding_window=16, attn_implementation="sdpa"))
    assert supports_shared_prompt(windowed, max_tokens=16)  # no row is longer than the window
    assert not supports_shared_prompt(windowed, max_tokens=17) and not supports_shared_prompt(windowed)


def test_bf16_autocast_shared_rows_close_to_separate_rows():
    """Under CPU bf16 autocast the bool mask still suits SDPA; the two layouts agree to bf16 rounding."""
    model, feats = llama().eval(), features(seed=5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        sep = pair_logprobs(model, collate_preference(feats, 0)).seq_logprobs
        shared = pair_logprobs(model, collate_shared_prompt(feats, 0)).seq_logprobs
    assert shared.dtype == torch.float32
    torch.testing.assert_close(shared, sep, atol=0.05, rtol=0.02)
