import math

import pytest
import torch

from alignlab.losses.preference import (
    aot_loss,
    aot_pair_loss,
    apo_down_loss,
    apo_zero_loss,
    bco_pair_loss,
    discopop_loss,
    dpo_loss,
    exo_pair_loss,
    hinge_loss,
    ipo_loss,
    nca_pair_loss,
    odpo_loss,
    robust_dpo_loss,
    sppo_hard_loss,
)

LOG2 = math.log(2.0)


def pair(pc, pr, rc, rr, grad=False):
    """Four (B,) tensors: policy chosen/rejected, ref chosen/rejected."""
    out = [torch.tensor(v if isinstance(v, list) else [v], dtype=torch.float64) for v in (pc, pr, rc, rr)]
    if grad:
        out[0].requires_grad_(True)
        out[1].requires_grad_(True)
    return out


# The worked point used below: policy (-10, -11), ref (-10.5, -10.5)
#   lr_c = -10 - -10.5 = 0.5, lr_r = -11 - -10.5 = -0.5, h = lr_c - lr_r = 1
POINT = (-10.0, -11.0, -10.5, -10.5)

# every loss with the keyword arguments that make it well defined at POINT
ALL = {
    "dpo": (dpo_loss, {}),
    "cdpo": (dpo_loss, {"label_smoothing": 0.1}),
    "robust": (robust_dpo_loss, {"label_smoothing": 0.1}),
    "ipo": (ipo_loss, {}),
    "hinge": (hinge_loss, {}),
    "odpo": (odpo_loss, {"offset": torch.tensor([math.e], dtype=torch.float64)}),
    "sppo_hard": (sppo_hard_loss, {}),
    "exo_pair": (exo_pair_loss, {}),
    "nca_pair": (nca_pair_loss, {}),
    "bco_pair": (bco_pair_loss, {"delta": torch.tensor(0.0, dtype=torch.float64)}),
    "aot": (aot_loss, {}),
    "aot_pair": (aot_pair_loss, {}),
    "apo_zero": (apo_zero_loss, {}),
    "apo_down": (apo_down_loss, {}),
    "discopop": (discopop_loss, {}),
}


def test_dpo_worked_example():
    """h = 1, beta = 0.1: -log s(0.1) = log(1 + e^-0.1) = 0.644397; rewards 0.1 * (0.5, -0.5)."""
    losses, rc, rr = dpo_loss(*pair(*POINT), beta=0.1)
    assert losses.item() == pytest.approx(0.644397, abs=1e-6)
    assert (rc.item(), rr.item()) == pytest.approx((0.05, -0.05))


def test_cdpo_worked_example():
    """eps = 0.1: 0.9 * 0.644397 + 0.1 * (0.644397 + 0.1) = 0.654397 (since -log s(-z) = -log s(z) + z)."""
    assert dpo_loss(*pair(*POINT), beta=0.1, label_smoothing=0.1)[0].item() == pytest.approx(0.654397, abs=1e-6)


def test_dpo_equal_logratios_is_log2_for_any_smoothing():
    """h = 0 -> -log s(0) = log 2, whatever eps (both terms are log 2)."""
    args = pair([-3.0, -7.0], [-4.0, -1.0], [-3.0, -7.0], [-4.0, -1.0])
    for eps in (0.0, 0.1, 0.3):
        losses = dpo_loss(*args, beta=0.5, label_smoothing=eps)[0]
        assert losses.tolist() == pytest.approx([LOG2, LOG2])


def test_dpo_beta_to_zero_is_log2():
    assert dpo_loss(*pair(*POINT), beta=1e-9)[0].item() == pytest.approx(LOG2)


def test_dpo_rejects_bad_smoothing():
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*pair(*POINT), beta=0.1, label_smoothing=0.5)


def test_robust_dpo_worked_example():
    """eps = 0.1: (0.9 * 0.644397 - 0.1 * 0.744397) / 0.8 = 0.631897."""
    assert robust_dpo_loss(*pair(*POINT), beta=0.1, label_smoothing=0.1)[0].item() == pytest.approx(0.631897, abs=1e-6)


def test_robust_dpo_limits_and_unbiasedness():
    """eps = 0 is DPO; h = 0 gives log 2; and averaging over a flip w.p. eps recovers clean DPO:
    (1 - eps) * rdpo(h) + eps * rdpo(-h) = -log s(beta h), the defining property of the rDPO estimator."""
    args = pair([-1.0, -5.0, -2.0], [-3.0, -2.0, -2.5], [-1.5, -4.0, -2.0], [-2.0, -2.5, -3.0])
    assert torch.allclose(robust_dpo_loss(*args, beta=0.3, label_smoothing=0.0)[0], dpo_loss(*args, beta=0.3)[0])
    tie = pair(-1.0, -2.0, -1.0, -2.0)
    assert robust_dpo_loss(*tie, beta=0.3, label_smoothing=0.2)[0].item() == pytest.approx(LOG2)
    pc, pr, rc, rr = args
    eps = 0.2
    kept = robust_dpo_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=eps)[0]
    flipped = robust_dpo_loss(pr, pc, rr, rc, beta=0.3, label_smoothing=eps)[0]
    assert torch.allclose((1 - eps) * kept + eps * flipped, dpo_loss(*args, beta=0.3)[0])


def test_ipo_worked_example():
    """beta = 0.1: target 1/(2 * 0.1) = 5, (1 - 5)^2 = 16; beta = 0.5: target 1 = h, loss 0 and zero gradient."""
    assert ipo_loss(*pair(*POINT), beta=0.1)[0].item() == pytest.approx(16.0)
    args = pair(*POINT, grad=True)
    loss = ipo_loss(*args, beta=0.5)[0]
    loss.sum().backward()
    assert loss.item() == pytest.approx(0.0)
    assert args[0].grad.item() == pytest.approx(0.0)


def test_hinge_worked_example():
    """beta = 0.1: max(0, 1 - 0.1) = 0.9; beta = 2: max(0, 1 - 2) = 0; beta -> 0: 1."""
    assert hinge_loss(*pair(*POINT), beta=0.1)[0].item() == pytest.approx(0.9)
    assert hinge_loss(*pair(*POINT), beta=2.0)[0].item() == 0.0
    assert hinge_loss(*pair(*POINT), beta=1e-12)[0].item() == pytest.approx(1.0)


def test_odpo_worked_example():
    """score gap e -> Delta = log e = 1: -log s(0.1 - 1) = log(1 + e^0.9) = 1.241154."""
    offset = torch.tensor([math.e], dtype=torch.float64)
    assert odpo_loss(*pair(*POINT), beta=0.1, offset=offset)[0].item() == pytest.approx(1.241154, abs=1e-6)


def test_odpo_reduces_to_dpo():
    """A score gap of 1 (log 1 = 0) or alpha = 0 gives plain DPO; a larger gap asks for a larger margin."""
    args = pair(*POINT)
    dpo = dpo_loss(*args, beta=0.1)[0]
    one = torch.ones(1, dtype=torch.float64)
    assert torch.allclose(odpo_loss(*args, beta=0.1, offset=one)[0], dpo)
    assert torch.allclose(odpo_loss(*args, beta=0.1, offset=one * 7.0, alpha=0.0)[0], dpo)
    assert odpo_loss(*args, beta=0.1, offset=one * 7.0)[0] > odpo_loss(*args, beta=0.1, offset=one * 2.0)[0]


def test_sppo_hard_worked_example():
    """beta = 0.5: target 1/(2 beta) = 1: (0.5 - 1)^2 + (-0.5 + 1)^2 = 0.5; zero at lr = (+1, -1)."""
    assert sppo_hard_loss(*pair(*POINT), beta=0.5)[0].item() == pytest.approx(0.5)
    assert sppo_hard_loss(*pair(-9.5, -11.5, -10.5, -10.5), beta=0.5)[0].item() == pytest.approx(0.0)


def test_exo_pair_worked_example():
    """h = 0: q = (1/2, 1/2), p = (1 - eps, eps): KL = log(1/2) - (log(1 - eps) + log eps) / 2; eps = 1e-3 -> 2.761231.
    The minimum, KL = 0, sits where s(beta h) = 1 - eps, i.e. beta h = log((1 - eps) / eps)."""
    assert exo_pair_loss(*pair(-1.0, -1.0, -1.0, -1.0), beta=0.1)[0].item() == pytest.approx(2.761231, abs=1e-6)
    h = math.log((1 - 1e-3) / 1e-3) / 0.1
    assert exo_pair_loss(*pair(h, 0.0, 0.0, 0.0), beta=0.1)[0].item() == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        exo_pair_loss(*pair(*POINT), beta=0.1, label_smoothing=0.0)


def test_nca_pair_worked_example():
    """all log-ratios 0: (1 + 1/2 + 1/2) * log 2 = 1.386294; at POINT (r = +-0.05):
    -log s(0.05) - 1/2 log s(-0.05) - 1/2 log s(0.05) = 1.361919."""
    assert nca_pair_loss(*pair(-1.0, -2.0, -1.0, -2.0), beta=0.1)[0].item() == pytest.approx(2 * LOG2)
    assert nca_pair_loss(*pair(*POINT), beta=0.1)[0].item() == pytest.approx(1.361919, abs=1e-6)


def test_bco_pair_worked_example():
    """beta = 1, lr = (0.5, -0.5): delta = 0 -> 2 * -log s(0.5) = 0.948154;
    delta = 0.5 -> -log s(0) - log s(1) = 0.693147 + 0.313262 = 1.006409."""
    args = pair(*POINT)
    assert bco_pair_loss(*args, beta=1.0, delta=0.0)[0].item() == pytest.approx(0.948154, abs=1e-6)
    delta = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    assert bco_pair_loss(*args, beta=1.0, delta=delta)[0].item() == pytest.approx(1.006409, abs=1e-6)


def test_aot_worked_example():
    """Paired AOT, beta = 1. Policy margins (2, -1) sort to (-1, 2); reference margins (0, 1) are sorted.
    z = (-1 - 0, 2 - 1) = (-1, 1): losses (-log s(-1), -log s(1)) = (1.313262, 0.313262) per QUANTILE,
    whereas per-pair DPO would compare pair 0 (h = 2) and pair 1 (h = -2)."""
    args = pair([0.0, -1.0], [-2.0, 0.0], [0.0, 0.0], [0.0, -1.0])
    losses = aot_loss(*args, beta=1.0)[0]
    assert losses.tolist() == pytest.approx([1.313262, 0.313262], abs=1e-6)


def test_aot_pair_worked_example():
    """Unpaired AOT, beta = 1: lr_c = (1, -1) sorts to (-1, 1), lr_r = (0, 2) is sorted:
    z = (-1 - 0, 1 - 2) = (-1, -1) -> both 1.313262."""
    args = pair([1.0, -1.0], [0.0, 2.0], [0.0, 0.0], [0.0, 0.0])
    assert aot_pair_loss(*args, beta=1.0)[0].tolist() == pytest.approx([1.313262, 1.313262], abs=1e-6)


def test_aot_equals_dpo_when_orders_agree_and_ignores_batch_order():
    """If the policy and reference margins (resp. lr_c and lr_r) are sorted by the same permutation, the sorted
    differences are the per-pair ones: the batch means equal DPO's. Shuffling the batch changes nothing."""
    # policy margins (1, 2.5, 0) and reference margins (0, 0, -0.5) sort by the same permutation
    args = pair([1.0, 3.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.5])
    dpo = dpo_loss(*args, beta=0.7)[0].mean()
    assert aot_loss(*args, beta=0.7)[0].mean().item() == pytest.approx(dpo.item())
    same_order = pair([1.0, 3.0, 0.0], [0.5, 1.0, -1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    assert aot_pair_loss(*same_order, beta=0.7)[0].mean().item() == pytest.approx(
        dpo_loss(*same_order, beta=0.7)[0].mean().item())
    perm = torch.tensor([2, 0, 1])
    shuffled = [t[perm] for t in args]
    for fn in (aot_loss, aot_pair_loss):
        assert fn(*shuffled, beta=0.7)[0].mean().item() == pytest.approx(fn(*args, beta=0.7)[0].mean().item())


def test_apo_worked_examples():
    """beta = 0.1, r = (0.05, -0.05): zero: 1 - s(0.05) + s(-0.05) = 0.975005; down: s(0.05) + 1 - s(0.1) = 0.987518.
    At all-zero log-ratios both are 1 (= their beta -> 0 limit)."""
    args = pair(*POINT)
    assert apo_zero_loss(*args, beta=0.1)[0].item() == pytest.approx(0.975005, abs=1e-6)
    assert apo_down_loss(*args, beta=0.1)[0].item() == pytest.approx(0.987518, abs=1e-6)
    zero = pair(-1.0, -2.0, -1.0, -2.0)
    assert apo_zero_loss(*zero, beta=0.1)[0].item() == pytest.approx(1.0)
    assert apo_down_loss(*zero, beta=0.1)[0].item() == pytest.approx(1.0)


def test_discopop_worked_example():
    """rho = 0: gate 1/2 -> (log 2 + e^0) / 2 = 0.846574; rho = beta h = 0.1: gate w = s(0.1 / 0.05) = s(2),
    (1 - w) * 0.644397 + w * e^-0.1 = 0.873792."""
    assert discopop_loss(*pair(-1.0, -2.0, -1.0, -2.0), beta=0.1)[0].item() == pytest.approx(0.846574, abs=1e-6)
    assert discopop_loss(*pair(*POINT), beta=0.1)[0].item() == pytest.approx(0.873792, abs=1e-6)


def test_discopop_is_not_monotone_near_zero():
    """Documented property of the discovered loss (Lu 2024, Fig. on LRML): around rho = 0 the gate switches from
    the logistic to the exponential branch fast enough that the loss RISES with the margin (slope ~ +0.78)."""
    args = pair(-1.0, -2.0, -1.0, -2.0, grad=True)
    discopop_loss(*args, beta=1.0)[0].sum().backward()
    assert args[0].grad.item() > 0


@pytest.mark.parametrize("name", sorted(ALL))
def test_gradient_signs(name):
    """At POINT (h = 1, beta = 0.1) minimizing the loss raises the chosen and lowers the rejected log-prob:
    d loss / d policy_chosen < 0 < d loss / d policy_rejected. APO-down is the exception by design: it lowers
    both (d / d policy_chosen = 0.1 * (s'(0.05) - s'(0.1)) > 0)."""
    fn, kwargs = ALL[name]
    args = pair(*POINT, grad=True)
    losses, chosen_rewards, rejected_rewards = fn(*args, beta=0.1, **kwargs)
    losses.sum().backward()
    assert args[1].grad.item() > 0
    if name == "apo_down":
        assert args[0].grad.item() > 0
    else:
        assert args[0].grad.item() < 0
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


@pytest.mark.parametrize("name", sorted(ALL))
def test_shapes_and_rewards(name):
    """Unreduced (B,) losses; rewards are beta * (policy - ref) per pair."""
    fn, kwargs = ALL[name]
    if "offset" in kwargs:
        kwargs = {"offset": torch.full((3,), 2.0, dtype=torch.float64)}
    args = pair([-1.0, -2.0, -3.0], [-2.0, -2.0, -1.0], [-1.5, -2.0, -2.0], [-2.0, -1.0, -1.0])
    losses, rc, rr = fn(*args, beta=0.2, **kwargs)
    assert losses.shape == (3,) and torch.isfinite(losses).all()
    assert rc.tolist() == pytest.approx([0.1, 0.0, -0.2])
    assert rr.tolist() == pytest.approx([0.0, -0.2, 0.0])
