import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from alignlab.losses.listwise import pro_loss, rrhf_loss


def t(rows, grad=False):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


# one prompt, three completions listed best-first by score; the policy prefers the worst one
P = [[-1.0, -2.0, -0.5]]
S = [[3.0, 2.0, 1.0]]
V = torch.tensor([[True, True, True]])


def test_rrhf_worked_example():
    """Pairs with s_i < s_j, penalty max(0, p_i - p_j):
    (i=1, j=0): max(0, -2 + 1) = 0;  (i=2, j=0): max(0, -0.5 + 1) = 0.5;  (i=2, j=1): max(0, -0.5 + 2) = 1.5.
    Sum 2.0. Ranking accuracy: only (1, 0) is ordered right -> 1/3."""
    losses, acc = rrhf_loss(t(P), t(S), valid=V)
    assert losses.tolist() == pytest.approx([2.0])
    assert acc.tolist() == pytest.approx([1 / 3])


def test_pro_worked_example():
    """Best-first q = (-1, -2, -0.5) under beta = 1:
    k=1: -log(e^-1 / (e^-1 + e^-2 + e^-0.5)),  k=2: -log(e^-2 / (e^-2 + e^-0.5)),  k=3: -log 1 = 0.
    = log(1 + e^-1 + e^0.5) + log(1 + e^1.5) = 1.104131 + 1.701413 = 2.805544."""
    expected = math.log(1 + math.exp(-1) + math.exp(0.5)) + math.log(1 + math.exp(1.5))
    assert expected == pytest.approx(2.805544, abs=1e-6)
    assert pro_loss(t(P), t(S), valid=V)[0].tolist() == pytest.approx([expected])


def test_pro_two_completions_is_pairwise_logistic():
    """K = 2: -log(e^q_best / (e^q_best + e^q_worst)) = -log s(beta * (p_best - p_worst)), the Bradley-Terry /
    DPO-shaped pairwise loss. With p_best = -1, p_worst = -1.5, beta = 2: -log s(1) = 0.313262."""
    losses = pro_loss(t([[-1.5, -1.0]]), t([[0.0, 1.0]]), valid=torch.tensor([[True, True]]), beta=2.0)[0]
    assert losses.tolist() == pytest.approx([0.313262], abs=1e-6)


def test_rrhf_k_list_is_sum_of_its_pairs():
    """RRHF over K completions = sum of RRHF over each of its K(K-1)/2 two-completion sub-lists."""
    torch.manual_seed(0)
    p, s = -torch.rand(1, 5, dtype=torch.float64) * 3, torch.randn(1, 5, dtype=torch.float64)
    full = rrhf_loss(p, s, valid=torch.ones(1, 5, dtype=torch.bool))[0]
    pairs = sum(rrhf_loss(p[:, [i, j]], s[:, [i, j]], valid=torch.ones(1, 2, dtype=torch.bool))[0]
                for i, j in itertools.combinations(range(5), 2))
    assert torch.allclose(full, pairs)


def _rrhf_loop(p, s, v):
    out = []
    for b in range(p.shape[0]):
        total = 0.0
        for i in range(p.shape[1]):
            for j in range(p.shape[1]):
                if v[b, i] and v[b, j] and s[b, i] < s[b, j]:
                    total += max(0.0, float(p[b, i] - p[b, j]))
        out.append(total)
    return out


def _pro_loop(p, s, v, beta):
    out = []
    for b in range(p.shape[0]):
        items = sorted([(float(s[b, k]), -k, float(p[b, k])) for k in range(p.shape[1]) if v[b, k]], reverse=True)
        q = [beta * x[2] for x in items]
        out.append(-sum(q[k] - math.log(sum(math.exp(x) for x in q[k:])) for k in range(len(q))))
    return out


def _random_lists(seed):
    g = torch.Generator().manual_seed(seed)
    p = -torch.rand(4, 6, generator=g, dtype=torch.float64) * 4
    s = torch.randint(0, 4, (4, 6), generator=g).to(torch.float64)  # small integers: ties happen
    v = torch.rand(4, 6, generator=g) > 0.3
    v[:, 0] = True
    return p, s, v


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorized_matches_loop(seed):
    """Slow Python loops over pairs / positions against the vectorized versions (with padding and ties)."""
    p, s, v = _random_lists(seed)
    assert rrhf_loss(p, s, valid=v)[0].tolist() == pytest.approx(_rrhf_loop(p, s, v))
    # distinct scores for PRO so the ranking (and hence the loss) does not depend on how ties break
    s_distinct = s + torch.arange(6, dtype=torch.float64) * 1e-3
    assert pro_loss(p, s_distinct, valid=v, beta=1.7)[0].tolist() == pytest.approx(_pro_loop(p, s_distinct, v, 1.7))


@pytest.mark.parametrize("fn", [rrhf_loss, pro_loss])
def test_invalid_entries_change_nothing(fn):
    """Padding slots with arbitrary (even huge) log-probs and scores leave losses and gradients unchanged."""
    p, s, v = _random_lists(3)
    s = s + torch.arange(6, dtype=torch.float64) * 1e-3
    p1 = p.clone().requires_grad_(True)
    loss1, acc1 = fn(p1, s, valid=v)
    loss1.sum().backward()
    junk_p = torch.where(v, p, torch.full_like(p, 1e4)).requires_grad_(True)
    junk_s = torch.where(v, s, torch.full_like(s, 1e6))
    loss2, acc2 = fn(junk_p, junk_s, valid=v)
    loss2.sum().backward()
    assert torch.allclose(loss1, loss2) and torch.allclose(acc1, acc2)
    assert torch.allclose(p1.grad, junk_p.grad)
    assert torch.isfinite(junk_p.grad).all() and (junk_p.grad[~v] == 0).all()


@pytest.mark.parametrize("fn", [rrhf_loss, pro_loss])
def test_order_of_completions_does_not_matter(fn):
    p, s, v = _random_lists(4)
    s = s + torch.arange(6, dtype=torch.float64) * 1e-3
    perm = torch.tensor([5, 2, 0, 4, 1, 3])
    assert torch.allclose(fn(p, s, valid=v)[0], fn(p[:, perm], s[:, perm], valid=v[:, perm])[0])


@pytest.mark.parametrize("fn", [rrhf_loss, pro_loss])
def test_gradient_signs(fn):
    """Minimizing raises the best completion's log-prob and lowers the worst one's."""
    p = t(P, grad=True)
    fn(p, t(S), valid=V)[0].sum().backward()
    assert p.grad[0, 0].item() < 0 < p.grad[0, 2].item()


def test_correct_ranking_costs_nothing_in_rrhf_and_little_in_pro():
    """Policy order agrees with scores: RRHF is 0, accuracy 1; PRO stays positive and shrinks as beta grows."""
    p, s = t([[-0.5, -1.0, -2.0]]), t(S)
    losses, acc = rrhf_loss(p, s, valid=V)
    assert losses.item() == 0.0 and acc.item() == 1.0
    assert pro_loss(p, s, valid=V, beta=10.0)[0].item() < pro_loss(p, s, valid=V, beta=1.0)[0].item()
    assert F.relu(pro_loss(p, s, valid=V)[0]).item() > 0
