import pytest
import torch

from alignlab.losses.unpaired import kto_loss


def t(*values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


DESIRABLE = torch.tensor([True, False])


def test_kto_worked_example():
    """beta = 0.1. Mismatched pairs: policy (-20, -20), ref (-21, -21) -> z0 = mean(1, 1) = 1.
    r = policy - ref = (-10 - -11, -10 - -9) = (1, -1).
    desirable:   1 - s(0.1 * (1 - 1))    = 1 - s(0)   = 0.5
    undesirable: 1 - s(0.1 * (1 - -1))   = 1 - s(0.2) = 0.450166
    rewards 0.1 * r = (0.1, -0.1)."""
    losses, rewards, kl = kto_loss(t(-10.0, -10.0), t(-11.0, -9.0), DESIRABLE, t(-20.0, -20.0), t(-21.0, -21.0),
                                   beta=0.1)
    assert losses.tolist() == pytest.approx([0.5, 0.450166], abs=1e-6)
    assert rewards.tolist() == pytest.approx([0.1, -0.1])
    assert kl.item() == pytest.approx(1.0)


def test_kto_weights_scale_each_side():
    """lambda_D = 2, lambda_U = 3: (2 * 0.5, 3 * 0.450166)."""
    losses = kto_loss(t(-10.0, -10.0), t(-11.0, -9.0), DESIRABLE, t(-20.0, -20.0), t(-21.0, -21.0), beta=0.1,
                      desirable_weight=2.0, undesirable_weight=3.0)[0]
    assert losses.tolist() == pytest.approx([1.0, 3 * 0.450166], abs=1e-6)


def test_kto_reference_point_is_clamped_and_detached():
    """A negative KL estimate (-1) clamps to z0 = 0, and no gradient flows into the mismatched log-probs."""
    kl_policy = t(-22.0, -20.0, grad=True)
    losses, _, kl = kto_loss(t(-1.0, -1.0), t(-1.0, -1.0), DESIRABLE, kl_policy, t(-21.0, -21.0), beta=0.1)
    assert kl.item() == 0.0
    assert losses.tolist() == pytest.approx([0.5, 0.5])  # r = 0, z0 = 0 -> 1 - s(0)
    assert not losses.requires_grad  # nothing else required grad: the KL path is cut


def test_kto_beta_to_zero_is_half_the_weight():
    losses = kto_loss(t(-3.0, -9.0), t(-5.0, -1.0), DESIRABLE, t(-2.0), t(-4.0), beta=1e-9,
                      desirable_weight=1.0, undesirable_weight=4.0)[0]
    assert losses.tolist() == pytest.approx([0.5, 2.0])


def test_kto_gradient_signs():
    """Desirable: raise its log-prob (grad < 0). Undesirable: lower it (grad > 0)."""
    policy = t(-10.0, -10.0, grad=True)
    kto_loss(policy, t(-10.5, -10.5), DESIRABLE, t(-20.0), t(-20.2), beta=0.1)[0].sum().backward()
    assert policy.grad[0].item() < 0 < policy.grad[1].item()


def test_kto_loop_matches_vectorized():
    """Per-example formula written out in Python against the vectorized torch.where."""
    torch.manual_seed(0)
    pol, ref = -torch.rand(6, dtype=torch.float64) * 10, -torch.rand(6, dtype=torch.float64) * 10
    des = torch.tensor([True, False, True, True, False, False])
    kpol, kref = -torch.rand(4, dtype=torch.float64) * 10, -torch.rand(4, dtype=torch.float64) * 10
    losses = kto_loss(pol, ref, des, kpol, kref, beta=0.3, desirable_weight=1.5, undesirable_weight=0.7)[0]
    z0 = max(0.0, float((kpol - kref).mean()))
    for i in range(6):
        r = float(pol[i] - ref[i])
        sig = torch.sigmoid(torch.tensor(0.3 * ((r - z0) if des[i] else (z0 - r)))).item()
        expected = (1.5 if des[i] else 0.7) * (1 - sig)
        assert losses[i].item() == pytest.approx(expected)
