"""Least-squares fits of the reward-vs-KL laws (numpy): Gao 2022's best-of-n and RL forms, Bai 2022's line."""

from __future__ import annotations

import math

import numpy as np


def _fit(columns: list[list[float]], y: list[float]) -> tuple[list[float], float]:
    """Coefficients of y ~ columns (no intercept) and R^2 (1 - SSE / SS around the mean)."""
    x, target = np.array(columns, dtype=float).T, np.array(y, dtype=float)
    coef, *_ = np.linalg.lstsq(x, target, rcond=None)
    residual = target - x @ coef
    total = float(((target - target.mean()) ** 2).sum())
    return [float(c) for c in coef], 1.0 - float((residual ** 2).sum()) / total if total > 0 else float("nan")


def fit_bon(d: list[float], gain: list[float]) -> dict:
    """Gao et al. 2022 (arXiv:2210.10760) Eq. 1: R_bon(d) = d (alpha - beta d), d = sqrt(KL)."""
    (alpha, minus_beta), r2 = _fit([d, [x * x for x in d]], gain)
    return {"alpha": alpha, "beta": -minus_beta, "r2": r2}


def fit_rl(d: list[float], gain: list[float]) -> dict:
    """Gao et al. 2022 Eq. 2: R_RL(d) = d (alpha - beta log d); points with d = 0 carry no information."""
    keep = [(x, g) for x, g in zip(d, gain) if x > 0]
    (alpha, minus_beta), r2 = _fit([[x for x, _ in keep], [x * math.log(x) for x, _ in keep]], [g for _, g in keep])
    return {"alpha": alpha, "beta": -minus_beta, "r2": r2}


def fit_line(d: list[float], gain: list[float]) -> dict:
    """Bai et al. 2022 (arXiv:2204.05862) §4.3: reward ~ a + b sqrt(KL), with intercept; slope and R^2."""
    (intercept, slope), r2 = _fit([[1.0] * len(d), d], gain)
    return {"intercept": intercept, "slope": slope, "r2": r2}
