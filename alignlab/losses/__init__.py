"""Pure loss math: tensors in, tensors out. Imports only torch (a test enforces it).

Modules: `aggregate` (reductions), `sft`, `preference` (pairwise with a reference: DPO, cDPO, rDPO, IPO, SLiC,
ODPO, SPPO, EXO, NCA, BCO, AOT, APO, DiscoPOP), `reference_free` (SimPO, CPO, ORPO), `unpaired` (KTO),
`listwise` (RRHF, PRO), `tdpo`, `reward` (Bradley-Terry, K-wise, binary, centering, attributes, gating, PRM),
`pg` (online RL: PPO clipped surrogate and value loss, KL estimators, truncated importance weights).
"""

from alignlab.losses import listwise, pg, preference, reference_free, reward, tdpo, unpaired
from alignlab.losses.aggregate import AGGREGATE_MODES, aggregate
from alignlab.losses.sft import nll_loss

__all__ = ["AGGREGATE_MODES", "aggregate", "listwise", "nll_loss", "pg", "preference", "reference_free", "reward",
           "tdpo", "unpaired"]
