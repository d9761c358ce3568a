"""Pure loss math: tensors in, tensors out. Imports only torch (a test enforces it)."""

from alignlab.losses.aggregate import AGGREGATE_MODES, aggregate
from alignlab.losses.sft import nll_loss

__all__ = ["AGGREGATE_MODES", "aggregate", "nll_loss"]
