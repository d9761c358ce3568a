import math

import pytest
import torch

from alignlab.advantages import (
    AdaptiveKLController,
    FixedKLController,
    expand,
    explained_variance,
    gae,
    group_advantages,
    masked_moments,
    overlong_penalty,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
    token_rewards,
    whiten,
    zero_variance_groups,
)

T = torch.tensor
D = torch.float64

# Ragged batch used across the GAE tests (positions 0-1 of row 0 are prompt; row 1 ends early and is padded)
#   row 0: mask [F, F, T, T, T]   row 1: mask [T, T, F, F, F]
MASK = T([[False, False, True, True, True], [True, True, False, False, False]])
REWARDS = T([[9.0, 9.0, 0.0, 0.5, 1.0], [0.0, 2.0, 9.0, 9.0, 9.0]], dtype=D)
VALUES = T([[9.0, 9.0, 0.2, 0.4, 0.6], [0.5, 1.0, 9.0, 9.0, 9.0]], dtype=D)


def loop_gae(rewards, values, mask, gamma, lam):
    """Plain-Python reference: per row, take the counted steps in order and run the textbook recursion."""
    adv, ret = torch.zeros_like(rewards), torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        steps = [t for t in range(rewards.shape[1]) if mask[b, t]]
        last = 0.0
        for i in reversed(range(len(steps))):
            t = steps[i]
            next_v = values[b, steps[i + 1]].item() if i + 1 < len(steps) else 0.0
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            last = delta + gamma * lam * last
            adv[b, t], ret[b, t] = last, last + values[b, t].item()
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0), (0.7, 0.0)])
def test_gae_matches_python_loop(gamma, lam):
    adv, ret = gae(REWARDS, VALUES, MASK, gamma=gamma, gae_lambda=lam)
    ref_adv, ref_ret = loop_gae(REWARDS, VALUES, MASK, gamma, lam)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)


def test_gae_and_reinforce_pp_random_ragged_rows():
    """Seeded random rewards, values and ragged masks (holes, empty rows): vectorized == loop; REINFORCE++ ==
    the loop's lambda = 1, V = 0 returns, whitened over the counted tokens by hand."""
    g = torch.Generator().manual_seed(3)
    rewards, values = torch.randn(6, 9, generator=g, dtype=D), torch.randn(6, 9, generator=g, dtype=D)
    mask = torch.rand(6, 9, generator=g) < 0.6
    mask[0] = False
    adv, ret = gae(rewards, values, mask, gamma=0.95, gae_lambda=0.9)
    ref_adv, ref_ret = loop_gae(rewards, values, mask, 0.95, 0.9)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)
    mc, _ = loop_gae(rewards, torch.zeros_like(values), mask, 0.95, 1.0)
    counted = mc[mask]
    expected = torch.zeros_like(mc)
    expected[mask] = (counted - counted.mean()) / counted.std()
    torch.testing.assert_close(reinforce_pp_advantages(rewards, mask, gamma=0.95), expected)


def test_gae_worked_example():
    """gamma = 1, lambda = 1, row 0 counted steps r = (0, .5, 1), V = (.2, .4, .6), V after the end = 0.
    returns = (1.5, 1.5, 1.0); advantages = returns - V = (1.3, 1.1, 0.4).
    row 1: r = (0, 2), V = (.5, 1): returns (2, 2), advantages (1.5, 1.0). Uncounted positions give 0,
    whatever reward/value (9) sits there."""
    adv, ret = gae(REWARDS, VALUES, MASK, gamma=1.0, gae_lambda=1.0)
    torch.testing.assert_close(adv, T([[0, 0, 1.3, 1.1, 0.4], [1.5, 1.0, 0, 0, 0]], dtype=D))
    torch.testing.assert_close(ret, T([[0, 0, 1.5, 1.5, 1.0], [2.0, 2.0, 0, 0, 0]], dtype=D))


def test_gae_lambda_zero_is_one_step_td():
    """lambda = 0: A_t = r_t + gamma V_{t+1} - V_t, V past the last counted token = 0.
    gamma = .9, row 0: (0 + .9*.4 - .2, .5 + .9*.6 - .4, 1 - .6) = (.16, .64, .4);
    row 1: (0 + .9*1 - .5, 2 - 1) = (.4, 1)."""
    adv, _ = gae(REWARDS, VALUES, MASK, gamma=0.9, gae_lambda=0.0)
    torch.testing.assert_close(adv, T([[0, 0, 0.16, 0.64, 0.4], [0.4, 1.0, 0, 0, 0]], dtype=D))


def test_gae_lambda_one_is_monte_carlo_minus_value():
    """lambda = 1: A_t = sum_k gamma^k r_{t+k} - V_t. gamma = .5, row 0: G = (0 + .25 + .25, .5 + .5, 1)
    = (.5, 1, 1) -> A = (.3, .6, .4); row 1: G = (0 + 1, 2) -> A = (.5, 1)."""
    adv, ret = gae(REWARDS, VALUES, MASK, gamma=0.5, gae_lambda=1.0)
    torch.testing.assert_close(adv, T([[0, 0, 0.3, 0.6, 0.4], [0.5, 1.0, 0, 0, 0]], dtype=D))
    torch.testing.assert_close(ret, T([[0, 0, 0.5, 1.0, 1.0], [1.0, 2.0, 0, 0, 0]], dtype=D))


def test_gae_ignores_values_past_the_end_and_skips_gaps():
    """Changing anything at uncounted positions changes nothing; a gap inside a row is skipped, so
    [T, F, T] behaves like the two counted steps [T, T]."""
    noisy_r, noisy_v = REWARDS.clone(), VALUES.clone()
    noisy_r[~MASK], noisy_v[~MASK] = -123.0, 77.0
    for a, b in zip(gae(REWARDS, VALUES, MASK, gamma=0.9, gae_lambda=0.8),
                    gae(noisy_r, noisy_v, MASK, gamma=0.9, gae_lambda=0.8)):
        torch.testing.assert_close(a, b)
    gap, _ = gae(T([[1.0, 5.0, 2.0]]), T([[0.5, 3.0, 1.0]]), T([[True, False, True]]), gamma=0.9, gae_lambda=0.7)
    dense, _ = gae(T([[1.0, 2.0]]), T([[0.5, 1.0]]), T([[True, True]]), gamma=0.9, gae_lambda=0.7)
    torch.testing.assert_close(gap[:, [0, 2]], dense)
    assert gap[0, 1] == 0


def test_gae_is_detached_and_checks_shapes():
    values = VALUES.clone().requires_grad_(True)
    adv, ret = gae(REWARDS, values, MASK, gamma=1.0, gae_lambda=0.9)
    assert not adv.requires_grad and not ret.requires_grad
    with pytest.raises(ValueError, match="values"):
        gae(REWARDS, VALUES[:, :3], MASK, gamma=1.0, gae_lambda=1.0)


def test_whiten_masked():
    """Counted (1, 2, 3): mean 2, unbiased var 1 -> (-1, 0, 1); the uncounted 100 gives 0 and does not
    move the statistics. shift_mean=False adds the mean back: (1, 2, 3)."""
    x = T([[1.0, 2.0], [3.0, 100.0]], dtype=D)
    m = T([[True, True], [True, False]])
    torch.testing.assert_close(whiten(x, m, eps=0.0), T([[-1.0, 0.0], [1.0, 0.0]], dtype=D))
    torch.testing.assert_close(whiten(x, m, shift_mean=False, eps=0.0), T([[1.0, 2.0], [3.0, 0.0]], dtype=D))
    v = whiten(T([3.0, 5.0, 7.0, 9.0], dtype=D))  # 1-D, no mask
    assert v.mean().item() == pytest.approx(0.0) and v.std().item() == pytest.approx(1.0)


def test_group_advantages_grpo_and_dr_grpo():
    """G = 3, prompt-major. Group 0 scores (1, 2, 3): mean 2, unbiased std 1 -> (-1, 0, 1).
    Group 1 scores (0, 0, 3): mean 1, std sqrt(((1 + 1 + 4) / 2)) = sqrt(3) -> (-1, -1, 2) / sqrt(3).
    Dr.GRPO (no std): (-1, 0, 1, -1, -1, 2)."""
    s = T([1.0, 2.0, 3.0, 0.0, 0.0, 3.0], dtype=D)
    r3 = math.sqrt(3.0)
    torch.testing.assert_close(group_advantages(s, 3, eps=0.0), T([-1, 0, 1, -1 / r3, -1 / r3, 2 / r3], dtype=D))
    torch.testing.assert_close(group_advantages(s, 3, scale_by_std=False), T([-1, 0, 1, -1, -1, 2], dtype=D))


def test_group_advantages_all_equal_group_is_zero_not_nan():
    adv = group_advantages(T([1.0, 1.0, 0.0, 1.0]), 2)
    assert torch.isfinite(adv).all()
    assert adv[:2].tolist() == [0.0, 0.0]
    assert group_advantages(T([5.0, 7.0]), 1).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(T([1.0, 2.0, 3.0]), 4)


def test_rloo_leave_one_out():
    """G = 4, scores (1, 2, 3, 6): baseline of row 0 = (2 + 3 + 6) / 3 = 11/3 -> 1 - 11/3 = -8/3.
    Closed form G/(G-1) * (s - mean) = 4/3 * (s - 3) = (-8/3, -4/3, 0, 4)."""
    s = T([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 1.0, 1.0], dtype=D)
    adv = rloo_advantages(s, 4)
    torch.testing.assert_close(adv[:4], T([-8 / 3, -4 / 3, 0.0, 4.0], dtype=D))
    g = s.view(2, 4)
    torch.testing.assert_close(adv, (4 / 3 * (g - g.mean(1, keepdim=True))).reshape(-1))
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo_advantages(s, 1)


def test_remax_subtracts_greedy_baseline():
    """(1, 0.5) sampled, greedy (0.25, 0.5) -> (0.75, 0)."""
    assert remax_advantages(T([1.0, 0.5]), T([0.25, 0.5])).tolist() == [0.75, 0.0]
    with pytest.raises(ValueError):
        remax_advantages(T([1.0, 0.5]), T([0.25]))


def test_token_rewards_score_at_last_token_minus_kl():
    """Row 0 counts positions 1-2: score 2 lands at position 2; KL (.1, .2, .3, .4) * coef .5 on counted
    tokens: (0, -.1, 2 - .15, 0). Row 1 counts only position 0: (-1 - .05, 0, 0, 0). Row 2 counts nothing: 0."""
    mask = T([[False, True, True, False], [True, False, False, False], [False] * 4])
    kl = T([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], [1.0] * 4], dtype=D)
    r = token_rewards(T([2.0, -1.0, 5.0], dtype=D), mask, kl=kl, kl_coef=0.5)
    torch.testing.assert_close(r, T([[0, -0.1, 1.85, 0], [-1.05, 0, 0, 0], [0, 0, 0, 0]], dtype=D))
    no_kl = token_rewards(T([2.0, -1.0, 5.0]), mask)
    assert no_kl.tolist() == [[0, 0, 2, 0], [-1, 0, 0, 0], [0, 0, 0, 0]]


def test_reinforce_pp_returns_then_global_whitening():
    """gamma = 1, rewards on counted tokens: row 0 (0, 0, 1) -> returns (1, 1, 1); row 1 (0, -1) -> (-1, -1).
    Five counted returns (1, 1, 1, -1, -1): mean .2, unbiased var (3 * .64 + 2 * 1.44) / 4 = 1.2.
    Advantages (1 - .2) / sqrt(1.2) and (-1 - .2) / sqrt(1.2); uncounted 0."""
    mask = T([[True, True, True], [False, True, True]])
    rewards = T([[0.0, 0.0, 1.0], [7.0, 0.0, -1.0]], dtype=D)
    adv = reinforce_pp_advantages(rewards, mask)
    hi, lo = 0.8 / math.sqrt(1.2), -1.2 / math.sqrt(1.2)
    torch.testing.assert_close(adv, T([[hi, hi, hi], [0.0, lo, lo]], dtype=D))
    masked = adv[mask]
    assert masked.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert masked.std().item() == pytest.approx(1.0, abs=1e-6)


def test_reinforce_pp_discount():
    """gamma = .5, one row rewards (1, 0, 4): returns (1 + 0 + 1, 0 + 2, 4) = (2, 2, 4);
    mean 8/3, unbiased var ((4/9) * 2 + 16/9) / 2 = 4/3."""
    adv = reinforce_pp_advantages(T([[1.0, 0.0, 4.0]], dtype=D), T([[True, True, True]]), gamma=0.5)
    s = math.sqrt(4 / 3)
    torch.testing.assert_close(adv, T([[(2 - 8 / 3) / s, (2 - 8 / 3) / s, (4 - 8 / 3) / s]], dtype=D))


def test_moments_of_two_shards_add_up_to_the_concatenation():
    """Shard a: counted (1, 2), shard b: counted (3, 4, 6). Moments (2, 3, 5) + (3, 13, 61) = (5, 16, 66): those of
    (1, 2, 3, 4, 6), whose mean is 3.2 and unbiased var (66 - 16^2 / 5) / 4 = 3.7."""
    a, mask_a = T([[1.0, 2.0, 9.0]], dtype=D), T([[True, True, False]])
    b, mask_b = T([[3.0, 4.0], [6.0, -5.0]], dtype=D), T([[True, True], [True, False]])
    both = masked_moments(a, mask_a) + masked_moments(b, mask_b)
    assert both.tolist() == [5.0, 16.0, 66.0] and both.dtype == D
    whole = T([1.0, 2.0, 3.0, 4.0, 6.0], dtype=D)
    assert whole.mean().item() == 3.2 and whole.var().item() == pytest.approx(3.7)
    expected = (whole - 3.2) / math.sqrt(3.7 + 1e-8)
    got = torch.cat([whiten(a, mask_a, moments=both)[mask_a], whiten(b, mask_b, moments=both)[mask_b]])
    torch.testing.assert_close(got, expected)
    assert whiten(a, mask_a, moments=both)[0, 2] == 0  # uncounted stays 0
    # the moments path agrees with the direct one on a single shard
    torch.testing.assert_close(whiten(b, mask_b, moments=masked_moments(b, mask_b)), whiten(b, mask_b))


def discounted_returns(rewards, mask, gamma):
    """G_t = sum over the counted tokens s >= t of gamma^(steps) r_s, by a plain loop."""
    out = torch.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        running = 0.0
        for t in reversed(range(rewards.shape[1])):
            if mask[i, t]:
                running = rewards[i, t].item() + gamma * running
                out[i, t] = running
    return out


def test_reinforce_pp_whitens_over_all_shards_with_reduce():
    """Two "processes" hold halves of a batch; `reduce` adds the other half's moments to this half's (what the
    recipe's all-reduce SUM does). Each half's advantages then equal that half of the whole-batch advantages;
    without `reduce` they do not (each half would be whitened on its own statistics)."""
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(6, 5, generator=gen, dtype=D)
    mask = torch.rand(6, 5, generator=gen) > 0.3
    whole = reinforce_pp_advantages(rewards, mask, gamma=0.9)
    halves = [(rewards[:3], mask[:3]), (rewards[3:], mask[3:])]
    shards = []
    for rank, (r, m) in enumerate(halves):
        other_r, other_m = halves[1 - rank]
        other = masked_moments(discounted_returns(other_r, other_m, 0.9), other_m)
        shards.append(reinforce_pp_advantages(r, m, gamma=0.9, reduce=lambda x, other=other: x + other))
    torch.testing.assert_close(torch.cat(shards), whole)
    local = torch.cat([reinforce_pp_advantages(r, m, gamma=0.9) for r, m in halves])
    assert not torch.allclose(local, whole)


def test_expand():
    out = expand(T([2.0, -1.0]), T([[False, True, True], [True, False, False]]))
    assert out.tolist() == [[0.0, 2.0, 2.0], [-1.0, 0.0, 0.0]]


def test_zero_variance_groups():
    """G = 2: group (1, 1) is flat -> drop both rows; (0, 1) is kept; (0.5, 0.5) flat."""
    flags = zero_variance_groups(T([1.0, 1.0, 0.0, 1.0, 0.5, 0.5]), 2)
    assert flags.tolist() == [True, True, False, False, True, True]


def test_overlong_penalty_boundaries():
    """Lmax = 20, buffer = 4: free up to 16 (0), 17 -> -1/4, 18 -> -1/2, 20 -> -1, beyond 20 -> -1."""
    out = overlong_penalty(T([0, 16, 17, 18, 20, 25]), max_length=20, buffer=4)
    assert out.tolist() == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(T([1]), max_length=20, buffer=0)


def test_explained_variance():
    """Perfect values -> 1; constant values -> 1 - Var[R] / Var[R] = 0; uncounted entries are ignored."""
    ret = T([[1.0, 2.0, 3.0, 50.0]])
    m = T([[True, True, True, False]])
    assert explained_variance(ret, ret, m).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(ret, 7.0), ret, m).item() == pytest.approx(0.0)
    assert explained_variance(ret + T([[0.0, 0.0, 0.0, 9.0]]), ret, m).item() == pytest.approx(1.0)


def test_adaptive_kl_controller_proportional_rule():
    """beta = .1, target 6, horizon 100, n_steps 10: KL 9 -> e = clip(.5) = .2 -> beta * (1 + .2 * .1) = .102;
    then KL 4.5 -> e = -.25 -> -.2 -> .102 * .98 = .09996; KL 6.6 -> e = .1 -> * 1.01."""
    c = AdaptiveKLController(0.1, target=6.0, horizon=100)
    c.update(9.0, n_steps=10)
    assert c.value == pytest.approx(0.102)
    c.update(4.5, n_steps=10)
    assert c.value == pytest.approx(0.102 * 0.98)
    c.update(6.6, n_steps=10)
    assert c.value == pytest.approx(0.102 * 0.98 * 1.01)
    state = c.state_dict()
    d = AdaptiveKLController(1.0, target=1.0, horizon=1)
    d.load_state_dict(state)
    assert (d.value, d.target, d.horizon) == (c.value, 6.0, 100)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)


def test_fixed_kl_controller():
    c = FixedKLController(0.05)
    c.update(100.0, n_steps=64)
    assert c.value == 0.05
    d = FixedKLController(1.0)
    d.load_state_dict(c.state_dict())
    assert d.value == 0.05
