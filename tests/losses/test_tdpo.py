import pytest
import torch

from alignlab.losses.preference import dpo_loss
from alignlab.losses.tdpo import tdpo_loss


def t(*values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


# policy (-10, -11), ref (-10.5, -10.5): lr_c = 0.5, lr_r = -0.5, h = 1; SeqKL chosen 0.2, rejected 0.6
LOGPROBS = (-10.0, -11.0, -10.5, -10.5)


def args(grad=False):
    return [t(v) for v in LOGPROBS] + [t(0.2, grad=grad), t(0.6, grad=grad)]


def test_tdpo1_worked_example():
    """delta = SeqKL_l - SeqKL_w = 0.4: -log s(0.1 * (1 - 0.4)) = -log s(0.06) = 0.663597."""
    assert tdpo_loss(*args(), beta=0.1, variant="tdpo1")[0].item() == pytest.approx(0.663597, abs=1e-6)


def test_tdpo2_worked_example():
    """delta = alpha * (0.6 - 0.2) = 0.2 with alpha = 0.5: -log s(0.1 * 0.8) = -log s(0.08) = 0.653947;
    rewards are beta * (policy - ref) = (0.05, -0.05)."""
    losses, rc, rr = tdpo_loss(*args(), beta=0.1)
    assert losses.item() == pytest.approx(0.653947, abs=1e-6)
    assert (rc.item(), rr.item()) == pytest.approx((0.05, -0.05))


def test_equal_kls_or_alpha_zero_give_dpo():
    """SeqKL_w = SeqKL_l -> delta = 0 -> DPO, both variants; TDPO2 with alpha = 0 is DPO too; TDPO1 ignores alpha."""
    logps = [t(v) for v in LOGPROBS]
    dpo = dpo_loss(*logps, beta=0.1)[0]
    kl = t(0.3)
    for variant in ("tdpo1", "tdpo2"):
        assert torch.allclose(tdpo_loss(*logps, kl, kl, beta=0.1, variant=variant)[0], dpo)
    assert torch.allclose(tdpo_loss(*args(), beta=0.1, alpha=0.0)[0], dpo)
    assert torch.allclose(tdpo_loss(*args(), beta=0.1, alpha=0.0, variant="tdpo1")[0],
                          tdpo_loss(*args(), beta=0.1, alpha=3.0, variant="tdpo1")[0])


def test_tdpo2_stops_gradient_through_chosen_kl():
    """TDPO2: d loss / d SeqKL_w = 0 (stop-gradient); d / d SeqKL_l = s(-z) * beta * alpha > 0, so minimizing
    keeps the rejected completion's KL small. TDPO1: d / d SeqKL_w = -s(-z) * beta < 0."""
    a = args(grad=True)
    losses = tdpo_loss(*a, beta=0.1, alpha=0.5)[0]
    losses.sum().backward()
    z = 0.1 * 0.8
    assert a[4].grad is None or a[4].grad.item() == 0.0
    assert a[5].grad.item() == pytest.approx(torch.sigmoid(t(-z)).item() * 0.1 * 0.5)
    b = args(grad=True)
    tdpo_loss(*b, beta=0.1, variant="tdpo1")[0].sum().backward()
    assert b[4].grad.item() < 0 < b[5].grad.item()


@pytest.mark.parametrize("variant", ["tdpo1", "tdpo2"])
def test_gradient_signs(variant):
    a = args()
    a[0].requires_grad_(True)
    a[1].requires_grad_(True)
    tdpo_loss(*a, beta=0.1, variant=variant)[0].sum().backward()
    assert a[0].grad.item() < 0 < a[1].grad.item()


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown TDPO variant"):
        tdpo_loss(*args(), beta=0.1, variant="tdpo3")
