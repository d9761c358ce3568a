import math

import pytest
import torch

from alignlab.losses import aggregate, nll_loss
from alignlab.losses.pg import (
    approx_kl,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_loss,
    kl_estimate,
    ptx_loss,
    truncated_is_weights,
)

T = torch.tensor
D = torch.float64


def test_kl_estimators_zero_at_equal_logprobs():
    lp = T([[-0.5, -2.0, -7.0]], dtype=D)
    for kind in ("k1", "k2", "k3"):
        assert kl_estimate(lp, lp.clone(), kind=kind).abs().max().item() == 0.0


def test_kl_estimators_worked_values():
    """p = -1, q = -2 (policy more likely): log r = q - p = -1.
    k1 = 1; k2 = 1/2; k3 = e^-1 + 1 - 1 = 0.367879."""
    p, q = T([[-1.0]], dtype=D), T([[-2.0]], dtype=D)
    assert kl_estimate(p, q, kind="k1").item() == pytest.approx(1.0)
    assert kl_estimate(p, q, kind="k2").item() == pytest.approx(0.5)
    assert kl_estimate(p, q, kind="k3").item() == pytest.approx(math.exp(-1.0))
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(p, q, kind="k4")


def test_k3_nonnegative_everywhere():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(64, 32, generator=g, dtype=D) * 5, torch.randn(64, 32, generator=g, dtype=D) * 5
    assert (kl_estimate(p, q, kind="k3") >= 0).all()
    assert (kl_estimate(p, q, kind="k2") >= 0).all()


def test_k1_k3_unbiased_by_monte_carlo():
    """p = Categorical(.5, .3, .2), q = Categorical(.2, .3, .5). KL(p || q) = .5 ln 2.5 + 0 + .2 ln .4
    = 0.458145 - 0.183258 = 0.274887. Sampling x ~ p, E[k1] and E[k3] match it; k2 is biased."""
    probs_p, probs_q = T([0.5, 0.3, 0.2], dtype=D), T([0.2, 0.3, 0.5], dtype=D)
    exact = (probs_p * (probs_p / probs_q).log()).sum().item()
    assert exact == pytest.approx(0.274887, abs=1e-6)
    x = torch.multinomial(probs_p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    lp, lq = probs_p.log()[x].view(1, -1), probs_q.log()[x].view(1, -1)
    assert kl_estimate(lp, lq, kind="k1").mean().item() == pytest.approx(exact, abs=0.01)
    assert kl_estimate(lp, lq, kind="k3").mean().item() == pytest.approx(exact, abs=0.01)


def test_kl_gradient_pushes_policy_toward_reference():
    """k3 with p > q: d k3 / d p = -exp(q - p) + 1 > 0, so minimizing lowers p (toward q)."""
    p = T([[-1.0]], dtype=D, requires_grad=True)
    kl_estimate(p, T([[-2.0]], dtype=D), kind="k3").sum().backward()
    assert p.grad.item() == pytest.approx(1.0 - math.exp(-1.0))


def test_policy_loss_ratio_one_is_minus_advantage():
    """ratio == 1: loss = -A per token; token_mean over counted (1, -2, 3) = -(1 - 2 + 3) / 3 = -2/3."""
    lp = T([[-1.0, -2.0, -3.0, -4.0]], dtype=D)
    adv = T([[1.0, -2.0, 3.0, 100.0]], dtype=D)
    loss, clipped = clipped_policy_loss(lp, lp.clone(), adv)
    torch.testing.assert_close(loss, -adv)
    assert not clipped.any()
    mask = T([[True, True, True, False]])
    assert aggregate(loss, mask, mode="token_mean").item() == pytest.approx(-2 / 3)


def test_policy_loss_clipping_and_zero_gradient():
    """eps = .2. Tokens (log ratio, A):
      (ln 1.5, +1): ratio 1.5 > 1.2 with A > 0 -> clipped, loss -1.2, gradient 0;
      (ln 0.5, -1): ratio .5 < .8 with A < 0 -> clipped, loss .8, gradient 0;
      (ln 1.5, -1): ratio above the range but A < 0 -> pessimistic unclipped term, loss 1.5, grad 1.5;
      (ln 0.9, +2): inside the range -> loss -1.8, grad -1.8 (d(-r A)/d log r = -r A)."""
    log_ratio = T([[math.log(1.5), math.log(0.5), math.log(1.5), math.log(0.9)]], dtype=D)
    old = T([[-1.0, -1.0, -1.0, -1.0]], dtype=D)
    lp = (old + log_ratio).requires_grad_(True)
    adv = T([[1.0, -1.0, -1.0, 2.0]], dtype=D)
    loss, clipped = clipped_policy_loss(lp, old, adv, clip_eps=0.2)
    torch.testing.assert_close(loss, T([[-1.2, 0.8, 1.5, -1.8]], dtype=D))
    assert clipped.tolist() == [[True, True, False, False]]
    loss.sum().backward()
    torch.testing.assert_close(lp.grad, T([[0.0, 0.0, 1.5, -1.8]], dtype=D))
    assert aggregate(clipped.float(), T([[True] * 4]), mode="token_mean").item() == 0.5


def test_policy_loss_gradient_sign():
    """Minimizing raises the log-prob of positive-advantage tokens and lowers negative ones."""
    lp = T([[-1.0, -1.0]], dtype=D, requires_grad=True)
    loss, _ = clipped_policy_loss(lp, lp.detach().clone(), T([[1.0, -1.0]], dtype=D))
    loss.sum().backward()
    assert lp.grad[0, 0] < 0 < lp.grad[0, 1]


def test_clip_higher_asymmetry():
    """clip_eps .2, clip_eps_high .28, A = +1: ratio 1.25 is inside [.8, 1.28] (loss -1.25, not clipped);
    with symmetric .2 it is clipped at 1.2. Ratio .75 with A = -1 is still clipped at .8 (loss .8)."""
    old = T([[0.0, 0.0]], dtype=D)
    lp = T([[math.log(1.25), math.log(0.75)]], dtype=D)
    adv = T([[1.0, -1.0]], dtype=D)
    hi, c_hi = clipped_policy_loss(lp, old, adv, clip_eps=0.2, clip_eps_high=0.28)
    sym, c_sym = clipped_policy_loss(lp, old, adv, clip_eps=0.2)
    torch.testing.assert_close(hi, T([[-1.25, 0.8]], dtype=D))
    torch.testing.assert_close(sym, T([[-1.2, 0.8]], dtype=D))
    assert c_hi.tolist() == [[False, True]] and c_sym.tolist() == [[True, True]]


def test_policy_loss_sequence_advantages_and_is_weights():
    """(B,) advantages broadcast over tokens; is_weights multiply the per-token loss: ratio 1, A = 2,
    weights (1, .5) -> (-2, -1)."""
    lp = T([[-1.0, -2.0]], dtype=D)
    loss, _ = clipped_policy_loss(lp, lp.clone(), T([2.0], dtype=D), is_weights=T([[1.0, 0.5]], dtype=D))
    torch.testing.assert_close(loss, T([[-2.0, -1.0]], dtype=D))
    with pytest.raises(ValueError, match="clip"):
        clipped_policy_loss(lp, lp, T([1.0]), clip_eps=-0.1)


def test_clipped_value_loss():
    """eps = .2, old value 1, return 2:
      v = 1.5: clipped v 1.2 -> max((.5)^2, (.8)^2) / 2 = .32, gradient 0 (the clipped branch is chosen);
      v = 1.1: inside -> (.9)^2 / 2 = .405, gradient v - R = -.9;
      v = 0.5: clipped v .8 -> max(1.5^2, 1.2^2) / 2 = 1.125, gradient -1.5 (unclipped is larger)."""
    v = T([[1.5, 1.1, 0.5]], dtype=D, requires_grad=True)
    old, ret = torch.ones(1, 3, dtype=D), torch.full((1, 3), 2.0, dtype=D)
    loss = clipped_value_loss(v, old, ret, clip_eps=0.2)
    torch.testing.assert_close(loss, T([[0.32, 0.405, 1.125]], dtype=D))
    loss.sum().backward()
    torch.testing.assert_close(v.grad, T([[0.0, -0.9, -1.5]], dtype=D))


def test_truncated_is_weights_capped_and_detached():
    """exp(old - sampler): ratios (.5, 1, 1.5, 10) capped at 2 -> (.5, 1, 1.5, 2)."""
    old = T([[math.log(0.5), 0.0, math.log(1.5), math.log(10.0)]], dtype=D, requires_grad=True)
    w = truncated_is_weights(old, torch.zeros(1, 4, dtype=D), cap=2.0)
    torch.testing.assert_close(w, T([[0.5, 1.0, 1.5, 2.0]], dtype=D))
    assert not w.requires_grad
    assert truncated_is_weights(T([[500.0]]), T([[0.0]])).item() == 2.0  # no overflow
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(old, old, cap=0.0)


def test_approx_kl():
    """ratio = new / old = e^1: (e - 1) - 1 = 0.718282; equal log-probs -> 0; never negative."""
    new, old = T([[0.0, -1.0]], dtype=D), T([[-1.0, -1.0]], dtype=D)
    torch.testing.assert_close(approx_kl(new, old), T([[math.e - 2.0, 0.0]], dtype=D))
    assert (approx_kl(torch.randn(8, 8), torch.randn(8, 8)) >= 0).all()


def test_entropy_loss_is_minus_coef_times_entropy_and_zero_when_off():
    """H = (0.5, 1.5), c = 0.1: per-token loss (-0.05, -0.15); its gradient raises the entropy (d loss / d H = -c)."""
    entropy = torch.tensor([[0.5, 1.5]], requires_grad=True)
    loss = entropy_loss(entropy, entropy_coef=0.1)
    torch.testing.assert_close(loss, torch.tensor([[-0.05, -0.15]]))
    loss.sum().backward()
    assert (entropy.grad < 0).all()
    assert entropy_loss(entropy, entropy_coef=0.0).abs().sum() == 0


def test_ptx_loss_is_gamma_times_nll():
    """log pi = (-1, -3), gamma = 0.5: per-token loss (0.5, 1.5) = gamma * NLL; gamma 0 gives 0."""
    logprobs = torch.tensor([[-1.0, -3.0]])
    torch.testing.assert_close(ptx_loss(logprobs, ptx_coef=0.5), torch.tensor([[0.5, 1.5]]))
    torch.testing.assert_close(ptx_loss(logprobs, ptx_coef=0.5), 0.5 * nll_loss(logprobs))
    assert ptx_loss(logprobs, ptx_coef=0.0).abs().sum() == 0
