import math

import pytest
import torch

from alignlab.losses.reference_free import cpo_loss, orpo_loss, simpo_loss

LOG2 = math.log(2.0)


def t(*values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def test_simpo_worked_example():
    """means (-1, -1.5), beta = 2, gamma = 0.5: z = 2 * (-1) - 2 * (-1.5) - 0.5 = 0.5, -log s(0.5) = 0.474077;
    rewards 2 * mean = (-2, -3)."""
    losses, rc, rr = simpo_loss(t(-1.0), t(-1.5), beta=2.0, gamma=0.5)
    assert losses.item() == pytest.approx(0.474077, abs=1e-6)
    assert (rc.item(), rr.item()) == (-2.0, -3.0)


def test_simpo_limits():
    """gamma = 0 and equal means -> log 2; with equal means the margin alone sets the loss: -log s(-gamma);
    beta -> 0 with gamma = 0 -> log 2."""
    assert simpo_loss(t(-1.2), t(-1.2), beta=2.5, gamma=0.0)[0].item() == pytest.approx(LOG2)
    assert simpo_loss(t(-1.2), t(-1.2), beta=2.5, gamma=1.0)[0].item() == pytest.approx(math.log1p(math.e))
    assert simpo_loss(t(-1.0), t(-3.0), beta=1e-9, gamma=0.0)[0].item() == pytest.approx(LOG2)


def test_simpo_gamma_beta_ratio_convention():
    """The authors' code: -log s(beta * (mean_c - mean_r - gamma_beta_ratio)); ours with gamma = beta * ratio."""
    beta, ratio = 2.5, 0.4
    c, r = t(-0.8, -1.0), t(-1.1, -0.7)
    theirs = -torch.nn.functional.logsigmoid(beta * (c - r - ratio))
    assert torch.allclose(simpo_loss(c, r, beta=beta, gamma=beta * ratio)[0], theirs)


def test_cpo_worked_example():
    """beta = 0.1, log-probs (-10, -11): -log s(0.1) = 0.644397; eps = 0.1 adds 0.1 * 0.1: 0.654397."""
    assert cpo_loss(t(-10.0), t(-11.0), beta=0.1)[0].item() == pytest.approx(0.644397, abs=1e-6)
    assert cpo_loss(t(-10.0), t(-11.0), beta=0.1, label_smoothing=0.1)[0].item() == pytest.approx(0.654397, abs=1e-6)


def test_cpo_equal_logprobs_is_log2():
    assert cpo_loss(t(-4.0, -9.0), t(-4.0, -9.0), beta=0.3)[0].tolist() == pytest.approx([LOG2, LOG2])


def test_orpo_worked_example():
    """p_c = 0.5 -> odds 1, log odds 0; p_r = 0.2 -> odds 1/4, log odds -log 4. log odds ratio = log 4,
    -log s(log 4) = -log(4/5) = log 1.25 = 0.223144; times beta = 0.1 -> 0.0223144."""
    losses, rc, rr, lor = orpo_loss(t(math.log(0.5)), t(math.log(0.2)), beta=0.1)
    assert losses.item() == pytest.approx(0.0223144, abs=1e-7)
    assert lor.item() == pytest.approx(math.log(4.0))
    assert (rc.item(), rr.item()) == pytest.approx((0.1 * math.log(0.5), 0.1 * math.log(0.2)))


def test_orpo_equal_logprobs_is_log2():
    """Equal log-probs -> odds ratio 1 -> -log s(0) = log 2 (times beta = 1)."""
    assert orpo_loss(t(-0.3, -4.0), t(-0.3, -4.0), beta=1.0)[0].tolist() == pytest.approx([LOG2, LOG2])


def test_orpo_stable_for_tiny_and_near_zero_logprobs():
    """log1mexp must not cancel: near 0 (p -> 1) and very negative (p -> 0) both stay finite, and for p -> 0 the
    log odds are just the log-probs (odds ~ p), so the ratio tends to lp_c - lp_r."""
    losses, _, _, lor = orpo_loss(t(-1e-6, -50.0), t(-1e-3, -60.0), beta=1.0)
    assert torch.isfinite(losses).all()
    assert lor[1].item() == pytest.approx(10.0, abs=1e-12)


@pytest.mark.parametrize("name", ["simpo", "cpo", "orpo"])
def test_gradient_signs(name):
    """Minimizing raises the chosen and lowers the rejected log-prob."""
    c, r = t(-1.0, grad=True), t(-1.5, grad=True)
    if name == "simpo":
        out = simpo_loss(c, r, beta=2.0, gamma=0.5)
    elif name == "cpo":
        out = cpo_loss(c, r, beta=0.1)
    else:
        out = orpo_loss(c, r, beta=0.1)
    out[0].sum().backward()
    assert c.grad.item() < 0 < r.grad.item()
    assert all(not x.requires_grad for x in out[1:])
