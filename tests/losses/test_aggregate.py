import subprocess
import sys

import pytest
import torch

from alignlab.losses import aggregate, nll_loss

# per-token loss and mask worked by hand:
#   row 0: tokens [1, 2, 3] all count        -> sum 6, len 3
#   row 1: tokens [4, x, x], only first counts -> sum 4, len 1
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
MASK = torch.tensor([[True, True, True], [True, False, False]])


def test_token_mean():
    """(6 + 4) / 4 counted tokens = 2.5"""
    assert aggregate(LOSS, MASK, mode="token_mean").item() == pytest.approx(2.5)


def test_token_mean_with_step_token_count():
    """micro-batch normalized by the whole step's 8 tokens: 10 / 8 = 1.25"""
    assert aggregate(LOSS, MASK, mode="token_mean", num_tokens=8).item() == pytest.approx(1.25)


def test_seq_mean_token_mean():
    """mean(6/3, 4/1) = mean(2, 4) = 3"""
    assert aggregate(LOSS, MASK, mode="seq_mean_token_mean").item() == pytest.approx(3.0)


def test_seq_mean_token_sum():
    """mean(6, 4) = 5"""
    assert aggregate(LOSS, MASK, mode="seq_mean_token_sum").item() == pytest.approx(5.0)


def test_seq_mean_token_sum_norm():
    """(6 + 4) / (2 rows * 5) = 1"""
    assert aggregate(LOSS, MASK, mode="seq_mean_token_sum_norm", constant=5).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        aggregate(LOSS, MASK, mode="seq_mean_token_sum_norm")


def test_masked_tokens_change_nothing():
    other = LOSS.clone()
    other[1, 1:] = -7.0
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        assert aggregate(other, MASK, mode=mode) == aggregate(LOSS, MASK, mode=mode)


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown aggregate mode"):
        aggregate(LOSS, MASK, mode="mean")


def test_nll_gradient_sign():
    """Minimizing NLL pushes log-probs up: d loss / d logprob = -1 on counted tokens, 0 elsewhere."""
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    aggregate(nll_loss(lp), torch.tensor([[True, False]]), mode="token_mean").backward()
    assert lp.grad.tolist() == [[-1.0, 0.0]]


@pytest.mark.parametrize("module", ["alignlab.losses", "alignlab.advantages"])
def test_pure_math_imports_with_torch_only(module):
    """losses/ and advantages.py must not import transformers, datasets or anything of alignlab beyond the
    pure-math modules themselves."""
    code = (
        f"import sys, {module}; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('transformers', 'datasets', 'accelerate', 'peft')"
        " or (m.startswith('alignlab.') and not m.startswith(('alignlab.losses', 'alignlab.advantages')))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
