"""Reward-model objectives on numbers worked by hand.

Reference values: -log sigmoid(d) = log(1 + e^-d)
    d = 2 -> 0.126928,  d = 1 -> 0.313262,  d = 0 -> log 2 = 0.693147,  d = -1 -> 1.313262.
"""

import itertools
import math
import subprocess
import sys

import pytest
import torch

from alignlab.losses.reward import (
    attribute_regression_loss,
    binary_discrimination_loss,
    bradley_terry_loss,
    dpo_regularization_loss,
    gated_bt_loss,
    gated_scores,
    kwise_ranking_loss,
    process_reward_loss,
    reward_centering_loss,
    sft_regularization_loss,
)

NLS = {2.0: 0.126928, 1.0: 0.313262, 0.0: math.log(2), -1.0: 1.313262}  # -log sigmoid(d)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_bradley_terry_worked_numbers():
    """s_c - s_r = 1, 0, -1, 2 -> 0.313262, log 2, 1.313262, 0.126928; correct only where s_c > s_r."""
    losses, correct = bradley_terry_loss(t(1.0, 3.0, 0.0, 2.5), t(0.0, 3.0, 1.0, 0.5))
    torch.testing.assert_close(losses, t(NLS[1.0], NLS[0.0], NLS[-1.0], NLS[2.0]), atol=1e-6, rtol=0)
    assert correct.tolist() == [True, False, False, True] and not correct.requires_grad


def test_bradley_terry_margin_shifts_the_boundary():
    """Llama 2 margin: d = 1 with m = 1 is a tie (log 2); with m = -1 it is d = 2 (0.126928)."""
    losses, correct = bradley_terry_loss(t(1.0, 1.0), t(0.0, 0.0), margin=t(1.0, -1.0))
    torch.testing.assert_close(losses, t(NLS[0.0], NLS[2.0]), atol=1e-6, rtol=0)
    assert correct.tolist() == [True, True]  # accuracy ignores the margin
    zero = bradley_terry_loss(t(1.0), t(0.0), margin=t(0.0))[0]
    assert zero.item() == pytest.approx(bradley_terry_loss(t(1.0), t(0.0))[0].item())


def test_bradley_terry_label_smoothing():
    """eps = 0.1, d = 1: 0.9 * 0.313262 + 0.1 * 1.313262 = 0.413262; eps = 0 is plain BT."""
    smoothed = bradley_terry_loss(t(1.0), t(0.0), label_smoothing=0.1)[0]
    assert smoothed.item() == pytest.approx(0.413262, abs=1e-6)
    plain = bradley_terry_loss(t(1.0), t(0.0))[0]
    assert bradley_terry_loss(t(1.0), t(0.0), label_smoothing=0.0)[0].item() == plain.item()
    with pytest.raises(ValueError, match="label_smoothing"):
        bradley_terry_loss(t(1.0), t(0.0), label_smoothing=0.5)


def test_label_smoothing_minimum_is_finite():
    """With eps the loss is minimal at d* = log((1 - eps) / eps): eps = 0.2 -> d* = log 4; gradient 0 there."""
    d = torch.tensor([math.log(4.0)], requires_grad=True)
    bradley_terry_loss(d, torch.zeros(1), label_smoothing=0.2)[0].sum().backward()
    assert d.grad.item() == pytest.approx(0.0, abs=1e-6)


def test_bradley_terry_gradient_signs():
    """At a tie d/ds_c = -sigma(0) = -0.5 and d/ds_r = +0.5: minimizing pushes chosen up, rejected down."""
    c, r = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    bradley_terry_loss(c, r)[0].sum().backward()
    assert c.grad.item() == pytest.approx(-0.5) and r.grad.item() == pytest.approx(0.5)


def test_bradley_terry_is_stable_for_large_gaps():
    losses = bradley_terry_loss(t(100.0, -100.0), t(0.0, 0.0))[0]
    assert losses[0].item() == pytest.approx(0.0, abs=1e-30) and losses[1].item() == pytest.approx(100.0)


SCORES = t(3.0, 1.0, 2.0, 0.0)
RANKS = torch.tensor([0, 1, 1, 2])  # entries 1 and 2 tie
VALID = torch.tensor([True, True, True, False])  # entry 3 is padding


def test_kwise_worked_numbers():
    """K = 4, scores (3, 1, 2, 0), ranks (0, 1, 1, 2), entry 3 invalid: pairs (0,1) d = 2 and (0,2) d = 1;
    the tie (1,2) and every pair with entry 3 are skipped -> mean(0.126928, 0.313262) = 0.220095.
    Row 2: 4 equal scores, strict ranks -> all C(4,2) = 6 pairs are ties of score: log 2.
    Row 3: all ranks tied -> no pair -> 0."""
    scores = torch.stack([SCORES, torch.zeros(4), SCORES])
    ranks = torch.stack([RANKS, torch.arange(4), torch.zeros(4, dtype=torch.long)])
    valid = torch.stack([VALID, torch.ones(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)])
    losses = kwise_ranking_loss(scores, ranks, valid=valid)
    torch.testing.assert_close(losses, t(0.220095, math.log(2), 0.0), atol=1e-6, rtol=0)


def test_kwise_equals_mean_of_pairwise_bt():
    """The K-wise loss is the mean of the Bradley-Terry terms of its valid, non-tied pairs."""
    bt = bradley_terry_loss(t(3.0, 3.0), t(1.0, 2.0))[0]
    kw = kwise_ranking_loss(SCORES[None], RANKS[None], valid=VALID[None])
    assert kw.item() == pytest.approx(bt.mean().item(), abs=1e-7)


def test_kwise_invalid_entries_change_nothing():
    other = SCORES.clone()
    other[3] = 1e4
    s = SCORES[None].requires_grad_()
    a = kwise_ranking_loss(s, RANKS[None], valid=VALID[None])
    b = kwise_ranking_loss(other[None], RANKS[None], valid=VALID[None])
    assert a.item() == b.item()
    a.sum().backward()
    assert s.grad[0, 3].item() == 0.0 and s.grad[0, 0].item() < 0 < s.grad[0, 1].item()


def test_kwise_matches_a_slow_loop():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 6, generator=gen)
    ranks = torch.randint(0, 4, (5, 6), generator=gen)
    valid = torch.rand(5, 6, generator=gen) > 0.2
    expected = []
    for b in range(5):
        terms = [-torch.nn.functional.logsigmoid(scores[b, i] - scores[b, j])
                 for i, j in itertools.permutations(range(6), 2)
                 if valid[b, i] and valid[b, j] and ranks[b, i] < ranks[b, j]]
        expected.append(torch.stack(terms).mean() if terms else torch.tensor(0.0))
    torch.testing.assert_close(kwise_ranking_loss(scores, ranks, valid=valid), torch.stack(expected))


def test_binary_discrimination():
    """s = 1 labelled good: 0.313262; labelled bad: -log(1 - sigmoid(1)) = 1.313262; s = 0: log 2 either way."""
    s = t(1.0, 1.0, 0.0).requires_grad_()
    losses = binary_discrimination_loss(s, torch.tensor([True, False, False]))
    torch.testing.assert_close(losses, t(NLS[1.0], NLS[-1.0], NLS[0.0]), atol=1e-6, rtol=0)
    losses.sum().backward()
    assert s.grad[0] < 0 < s.grad[1]  # good scores pushed up, bad ones down


def test_reward_centering():
    """coef 0.5: (1 + 2)^2 * 0.5 = 4.5; (1 + (-1))^2 = 0; gradient 2 * 0.5 * 3 = 3 on both scores."""
    c, r = t(1.0, 1.0).requires_grad_(), t(2.0, -1.0).requires_grad_()
    losses = reward_centering_loss(c, r, coef=0.5)
    torch.testing.assert_close(losses, t(4.5, 0.0))
    losses.sum().backward()
    assert c.grad.tolist() == [3.0, 0.0] and r.grad.tolist() == [3.0, 0.0]


def test_attribute_regression_masked_mean_and_nan_targets():
    """pred (1, 2, 3), target (0, 2, NaN), third unrated: ((1-0)^2 + 0) / 2 = 0.5; d/dpred = (1, 0, 0).
    A row with no rated attribute has loss 0."""
    pred = t(1.0, 2.0, 3.0).repeat(2, 1).requires_grad_()
    target = t(0.0, 2.0, float("nan")).repeat(2, 1)
    valid = torch.tensor([[True, True, False], [False, False, False]])
    losses = attribute_regression_loss(pred, target, valid=valid)
    torch.testing.assert_close(losses, t(0.5, 0.0))
    losses.sum().backward()
    assert pred.grad.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


W = t(0.25, 0.75)[None]


def test_gated_scores():
    """w = (0.25, 0.75), r = (2, 4): 0.5 + 3 = 3.5."""
    assert gated_scores(W, t(2.0, 4.0)[None]).item() == pytest.approx(3.5)


def test_gated_bt_loss_and_gate_gradient():
    """R_c = 0.25*2 + 0.75*4 = 3.5, R_r = 0.25*6 + 0 = 1.5: d = 2 -> 0.126928; beta = 0.5 -> d = 1 -> 0.313262.
    dL/dw = -sigma(-beta d) * beta * (r_c - r_r), r_c - r_r = (-4, 4): weight moves to objective 2."""
    chosen, rejected = t(2.0, 4.0)[None], t(6.0, 0.0)[None]
    losses, correct = gated_bt_loss(W, chosen, rejected)
    assert losses.item() == pytest.approx(NLS[2.0], abs=1e-6) and correct.tolist() == [True]
    w = W.clone().requires_grad_()
    assert gated_bt_loss(w, chosen, rejected, beta=0.5)[0].item() == pytest.approx(NLS[1.0], abs=1e-6)
    gated_bt_loss(w, chosen, rejected)[0].sum().backward()
    assert w.grad[0, 0] > 0 > w.grad[0, 1]


def test_process_reward_loss():
    """step logits (2, -1, 0), labels (correct, wrong, correct): (0.126928, 0.313262, log 2)."""
    logits = t(2.0, -1.0, 0.0)
    losses = process_reward_loss(logits, torch.tensor([True, False, True]))
    torch.testing.assert_close(losses, t(NLS[2.0], NLS[1.0], NLS[0.0]), atol=1e-6, rtol=0)


def test_sft_regularizer_worked_numbers_and_limits():
    """GRM SFT regularizer -log sigmoid(beta log pi): beta = 0.1, log pi = -10 -> softplus(1) = 1.313262;
    log pi = 0 (the LM is certain) -> log 2; log pi = -1000 -> 100.0 = beta * NLL (the large-NLL limit).
    d/d log pi = -beta sigmoid(-beta log pi) = -0.1 * sigmoid(1) = -0.073106: raising log pi lowers the loss."""
    lp = t(-10.0, 0.0, -1000.0).requires_grad_()
    losses = sft_regularization_loss(lp, beta=0.1)
    torch.testing.assert_close(losses, t(NLS[-1.0], NLS[0.0], 100.0), atol=1e-5, rtol=0)
    losses.sum().backward()
    assert lp.grad[0].item() == pytest.approx(-0.073106, abs=1e-6)
    assert lp.grad[2].item() == pytest.approx(-0.1, abs=1e-6) and lp.grad[1].item() == pytest.approx(-0.05)


def test_dpo_regularizer_worked_numbers():
    """beta = 0.1, log pi(y_c) = -5, log pi(y_r) = -15: d = 1 -> 0.313262; equal log-probs -> log 2; it is the
    Bradley-Terry loss of the scaled log-likelihoods, and moves chosen up, rejected down."""
    c, r = t(-5.0, -7.0).requires_grad_(), t(-15.0, -7.0).requires_grad_()
    losses = dpo_regularization_loss(c, r, beta=0.1)
    torch.testing.assert_close(losses, t(NLS[1.0], NLS[0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(losses, bradley_terry_loss(0.1 * c, 0.1 * r)[0])
    losses.sum().backward()
    assert (c.grad < 0).all() and (r.grad > 0).all()


def test_reward_losses_import_with_torch_only():
    code = (
        "import sys, alignlab.losses.reward; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('transformers', 'datasets', 'accelerate', 'peft')"
        " or (m.startswith('alignlab.') and not m.startswith('alignlab.losses'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
