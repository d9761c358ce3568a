"""Ensemble combination on numbers worked by hand.

scores row 0 = (1, 2, 3): mean 2, min 1, population std sqrt(2/3) = 0.816497, mean - std = 1.183503.
scores row 1 = (0, 0, 0): everything 0.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import alignlab.rewards
from alignlab.rewards import MODES, combine, disagreement

SCORES = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize(("mode", "lam", "expected"), [
    ("mean", 1.0, [2.0, 0.0]),
    ("min", 1.0, [1.0, 0.0]),
    ("mean_minus_std", 1.0, [1.183503, 0.0]),
    ("mean_minus_std", 2.0, [2.0 - 2 * 0.816497, 0.0]),
])
def test_modes_worked_numbers(mode, lam, expected):
    torch.testing.assert_close(combine(SCORES, mode=mode, lam=lam), torch.tensor(expected), atol=1e-6, rtol=0)


def test_disagreement():
    torch.testing.assert_close(disagreement(SCORES), torch.tensor([0.816497, 0.0]), atol=1e-6, rtol=0)
    assert disagreement(torch.tensor([[5.0]])).item() == 0.0  # one member: no disagreement, not NaN


def test_limiting_cases_on_random_scores():
    """min <= mean_minus_std(lam) <= mean for lam in [0, 1]; lam = 0 gives exactly the mean; N = 1 collapses all."""
    scores = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
    mean = combine(scores, mode="mean")
    assert (combine(scores, mode="min") <= mean).all()
    assert torch.equal(combine(scores, mode="mean_minus_std", lam=0.0), mean)
    assert (combine(scores, mode="mean_minus_std", lam=0.5) <= mean).all()
    one = scores[:, :1]
    for mode in MODES:
        torch.testing.assert_close(combine(one, mode=mode), one[:, 0])


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown ensemble mode"):
        combine(SCORES, mode="max")


def test_ensemble_imports_torch_only():
    """rewards/ensemble.py, loaded on its own, brings in no transformers/peft/alignlab module."""
    path = Path(alignlab.rewards.__file__).with_name("ensemble.py")
    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('ensemble', {str(path)!r}); "
        "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('transformers', 'datasets', 'accelerate', 'peft',"
        " 'alignlab')]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
