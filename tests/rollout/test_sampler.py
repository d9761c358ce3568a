"""The batched sampler: filters, empirical distributions against probabilities worked out by hand, log-probs."""

from __future__ import annotations

import math

import torch

from alignlab.rollout.sampler import draw, filter_logits, sample_tokens

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])


def _frequencies(rows: int = 40_000, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tokens, logprobs = sample_tokens(LOGITS.expand(rows, -1), generator=g, **kw)
    return torch.bincount(tokens, minlength=5).float() / rows, logprobs


def test_temperature_and_top_p():
    """T = 0.5: z = [4, 2, 1, 0, -2], p = [.829, .112, .041, .015, .002]. top_p = 0.9 keeps the first two (the
    mass before the third is .941 >= .9), renormalized: [1 / (1 + e^-2), e^-2 / (1 + e^-2)] = [.8808, .1192]."""
    freq, logprobs = _frequencies(temperature=0.5, top_p=0.9)
    expected = torch.tensor([1 / (1 + math.exp(-2)), math.exp(-2) / (1 + math.exp(-2)), 0, 0, 0])
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)  # 6 sigma at 40k draws
    # the recorded log-prob is of the unfiltered tempered distribution
    full = torch.log_softmax(LOGITS / 0.5, -1)
    assert set(logprobs.tolist()) <= {full[0].item(), full[1].item()}


def test_top_k_and_plain_temperature():
    """top_k = 3 at T = 1: softmax([2, 1, .5]) = [.6285, .2312, .1402]; no filter at T = 2: softmax(LOGITS / 2)."""
    freq, _ = _frequencies(temperature=1.0, top_k=3)
    torch.testing.assert_close(freq, torch.tensor([0.6285, 0.2312, 0.1402, 0, 0]), atol=0.01, rtol=0)
    freq, _ = _frequencies(temperature=2.0)
    torch.testing.assert_close(freq, torch.softmax(LOGITS / 2, -1), atol=0.01, rtol=0)


def test_greedy_banned_and_filters():
    tokens, logprobs = sample_tokens(LOGITS[None], temperature=0)
    assert tokens.tolist() == [0] and math.isclose(logprobs.item(), torch.log_softmax(LOGITS, -1)[0].item(),
                                                   rel_tol=1e-6)
    tokens, _ = sample_tokens(LOGITS[None], temperature=0, banned=torch.tensor([0]))
    assert tokens.tolist() == [1]  # EOS (here token 0) suppressed: the next best
    tokens, _ = sample_tokens(LOGITS.expand(500, -1), temperature=1.0, banned=torch.tensor([0, 1]),
                              generator=torch.Generator().manual_seed(1))
    assert not ({0, 1} & set(tokens.tolist()))
    assert torch.equal(filter_logits(LOGITS[None]), LOGITS[None])  # both filters off
    kept = torch.isfinite(filter_logits(LOGITS[None], top_k=2, top_p=0.5))
    assert kept.tolist() == [[True, False, False, False, False]]  # top-2 renormalized: .73 >= .5 after one


def test_draw_never_picks_zero_probability():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]]).expand(10_000, -1)
    picks = draw(probs, torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {1, 3}
    assert abs((picks == 1).float().mean().item() - 0.5) < 0.03
