"""Our losses against (1) the paper's formula written inline here, scalar by scalar, and (2) TRL 1.x.

TRL keeps most losses inside `DPOTrainer._compute_loss`, which runs a model. We call that method unbound on a
SimpleNamespace standing in for the trainer, with a fake model whose per-token log-probs sum to the
sequence log-probs we choose (and precomputed reference log-probs), so TRL's own code computes the number.
It returns the batch mean, which we compare with our per-pair losses averaged.

Where TRL differs from the paper, the test asserts the known difference instead of equality:
  - sigmoid: TRL ignores `label_smoothing` -> TRL(eps) == ours(eps = 0) != ours(eps).
  - ipo: TRL divides log-ratios by completion length -> TRL == ours fed mean log-probs, != ours fed sums.
  - bco_pair: TRL 1.16 drops the running-mean shift delta -> TRL == ours(delta = 0) != ours(delta).
  - ORPO: TRL's `odds_ratio_loss` returns +beta log s(.) (the caller subtracts it) -> ours == -TRL.
ODPO, RRHF, PRO and TDPO have no TRL counterpart; their paper formulas are checked here and in their own tests.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

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
from alignlab.losses.reference_free import cpo_loss, orpo_loss, simpo_loss
from alignlab.losses.tdpo import tdpo_loss
from alignlab.losses.unpaired import kto_loss

BETA = 0.3
# three pairs, summed log-probs; completion lengths for the length-normalized variants
PC = [-12.0, -30.0, -7.0]
PR = [-14.0, -26.0, -9.5]
RC = [-12.5, -29.0, -8.0]
RR = [-13.0, -27.5, -9.0]
LEN_C = [4, 10, 2]
LEN_R = [5, 8, 3]


def sp(x: float) -> float:
    """-log sigmoid(x), in plain Python."""
    return math.log1p(math.exp(-x)) if x > -30 else -x


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def tensors(*lists):
    return [torch.tensor(v, dtype=torch.float64) for v in lists]


def mean(xs):
    return sum(xs) / len(xs)


# ---- paper formulas, one pair at a time: c, r are log-ratios policy - ref (lr_c, lr_r) -------------------------
PAPER = {
    "sigmoid": lambda c, r, b: sp(b * (c - r)),  # Rafailov 2023 Eq. 7
    "hinge": lambda c, r, b: max(0.0, 1 - b * (c - r)),  # SLiC-HF / RSO
    "ipo": lambda c, r, b: (c - r - 1 / (2 * b)) ** 2,  # Azar 2023 Eq. 17
    "nca_pair": lambda c, r, b: sp(b * c) + 0.5 * sp(-b * c) + 0.5 * sp(-b * r),  # Chen 2024
    "sppo_hard": lambda c, r, b: (c - 1 / (2 * b)) ** 2 + (r + 1 / (2 * b)) ** 2,  # Wu 2024, P in {0, 1}
    "apo_zero": lambda c, r, b: 1 - sig(b * c) + sig(b * r),  # D'Oosterlinck 2024 Eq. 7 (+1)
    "apo_down": lambda c, r, b: sig(b * c) + 1 - sig(b * (c - r)),  # Eq. 8 (+1)
    "discopop": lambda c, r, b: ((1 - sig(b * (c - r) / 0.05)) * sp(b * (c - r))
                                 + sig(b * (c - r) / 0.05) * math.exp(-b * (c - r))),  # Lu 2024 LRML
}
OURS = {
    "sigmoid": dpo_loss, "hinge": hinge_loss, "ipo": ipo_loss, "nca_pair": nca_pair_loss,
    "sppo_hard": sppo_hard_loss, "apo_zero": apo_zero_loss, "apo_down": apo_down_loss, "discopop": discopop_loss,
}


def paper_values(name, b=BETA):
    return [PAPER[name](pc - rc, pr - rr, b) for pc, pr, rc, rr in zip(PC, PR, RC, RR)]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_ours_equals_paper_formula(name):
    ours = OURS[name](*tensors(PC, PR, RC, RR), beta=BETA)[0]
    assert ours.tolist() == pytest.approx(paper_values(name), rel=1e-10)


def test_paper_formulas_with_extra_arguments():
    """cDPO (Mitchell Eq. 3), rDPO, EXO, BCO with its shift, ODPO (log offset), AOT (sorted), TDPO."""
    args = tensors(PC, PR, RC, RR)
    c = [pc - rc for pc, rc in zip(PC, RC)]
    r = [pr - rr for pr, rr in zip(PR, RR)]
    h = [a - b for a, b in zip(c, r)]
    eps, b = 0.2, BETA
    cdpo = [(1 - eps) * sp(b * x) + eps * sp(-b * x) for x in h]
    assert dpo_loss(*args, beta=b, label_smoothing=eps)[0].tolist() == pytest.approx(cdpo)
    rdpo = [((1 - eps) * sp(b * x) - eps * sp(-b * x)) / (1 - 2 * eps) for x in h]
    assert robust_dpo_loss(*args, beta=b, label_smoothing=eps)[0].tolist() == pytest.approx(rdpo)
    e = 1e-3  # EXO: KL([s(bh), s(-bh)] || [1 - e, e])
    exo = [sig(b * x) * (math.log(sig(b * x)) - math.log(1 - e)) + sig(-b * x) * (math.log(sig(-b * x)) - math.log(e))
           for x in h]
    assert exo_pair_loss(*args, beta=b)[0].tolist() == pytest.approx(exo)
    d = 0.4  # BCO: -log s(b c - d) - log s(-(b r - d))
    assert bco_pair_loss(*args, beta=b, delta=torch.tensor(d))[0].tolist() == pytest.approx(
        [sp(b * x - d) + sp(-(b * y - d)) for x, y in zip(c, r)])
    gaps = [0.5, 2.0, 3.0]  # ODPO: -log s(b h - alpha log gap)
    assert odpo_loss(*args, beta=b, offset=torch.tensor(gaps, dtype=torch.float64), alpha=0.7)[0].tolist() == (
        pytest.approx([sp(b * x - 0.7 * math.log(g)) for x, g in zip(h, gaps)]))
    m = sorted(pc - pr for pc, pr in zip(PC, PR))
    m_ref = sorted(rc - rr for rc, rr in zip(RC, RR))
    assert aot_loss(*args, beta=b)[0].tolist() == pytest.approx([sp(b * (x - y)) for x, y in zip(m, m_ref)])
    assert aot_pair_loss(*args, beta=b)[0].tolist() == pytest.approx(
        [sp(b * (x - y)) for x, y in zip(sorted(c), sorted(r))])
    kl_c, kl_r = [0.1, 0.5, 0.2], [0.3, 0.1, 0.9]  # TDPO: -log s(b (h - delta))
    kls = tensors(kl_c, kl_r)
    assert tdpo_loss(*args, *kls, beta=b, variant="tdpo1")[0].tolist() == pytest.approx(
        [sp(b * (x - (kr - kc))) for x, kc, kr in zip(h, kl_c, kl_r)])
    assert tdpo_loss(*args, *kls, beta=b, alpha=0.5)[0].tolist() == pytest.approx(
        [sp(b * (x - 0.5 * (kr - kc))) for x, kc, kr in zip(h, kl_c, kl_r)])


def test_reference_free_and_kto_paper_formulas():
    mc = [pc / n for pc, n in zip(PC, LEN_C)]
    mr = [pr / n for pr, n in zip(PR, LEN_R)]
    simpo = [sp(2.0 * x - 2.0 * y - 0.8) for x, y in zip(mc, mr)]  # Meng 2024 Eq. 6
    assert simpo_loss(*tensors(mc, mr), beta=2.0, gamma=0.8)[0].tolist() == pytest.approx(simpo)
    assert cpo_loss(*tensors(PC, PR), beta=BETA)[0].tolist() == pytest.approx(
        [sp(BETA * (x - y)) for x, y in zip(PC, PR)])  # Xu 2024 Eq. 3

    def log_odds(lp):
        return math.log(math.exp(lp) / (1 - math.exp(lp)))

    orpo = [BETA * sp(log_odds(x) - log_odds(y)) for x, y in zip(mc, mr)]  # Hong 2024 Eq. 7, times lambda
    assert orpo_loss(*tensors(mc, mr), beta=BETA)[0].tolist() == pytest.approx(orpo)
    # KTO (Ethayarajh 2024 Eq. 8): first pair chosen desirable, others undesirable
    pol, ref = PC, RC
    kl_pol, kl_ref = PR, RR
    z0 = max(0.0, mean([a - b for a, b in zip(kl_pol, kl_ref)]))
    desirable = [True, False, False]
    kto = [(1 - sig(BETA * (p - q - z0))) if dd else 1.5 * (1 - sig(BETA * (z0 - (p - q))))
           for p, q, dd in zip(pol, ref, desirable)]
    ours = kto_loss(*tensors(pol, ref), torch.tensor(desirable), *tensors(kl_pol, kl_ref), beta=BETA,
                    undesirable_weight=1.5)[0]
    assert ours.tolist() == pytest.approx(kto)


# ---- TRL --------------------------------------------------------------------------------------------------------


def _accelerator():
    return SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)


def _fake_model(rows: dict[int, torch.Tensor]):
    """A 'model' returning per-token log-probs chosen by sequence width (TRL sums them over positions)."""

    def forward(*, input_ids, labels=None, fused_lm_head=True, **_):
        logps = rows[input_ids.shape[1]]
        zeros = torch.zeros_like(logps)
        return SimpleNamespace(log_probs=logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    return forward


def _per_token(seq_logprobs: torch.Tensor, lengths: list[int], width: int):
    """(N, width) completion mask (position 0 is the prompt) and (N, width - 1) per-token log-probs whose sum
    over each completion is `seq_logprobs`, spread evenly over its `lengths` tokens."""
    n = seq_logprobs.shape[0]
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, k in enumerate(lengths):
        mask[i, 1:1 + k] = 1
    shifted = mask[:, 1:].to(seq_logprobs.dtype)
    return mask, shifted * (seq_logprobs / torch.tensor(lengths, dtype=seq_logprobs.dtype)).unsqueeze(1)


@pytest.fixture(scope="module")
def trl_dpo():
    pytest.importorskip("trl")
    from trl.trainer.dpo_trainer import DPOTrainer

    def run(loss_type, *, beta=BETA, label_smoothing=0.0, lengths=None, pc=PC, pr=PR, rc=RC, rr=RR):
        b = len(pc)
        lengths = lengths or [1] * (2 * b)
        width = max(lengths) + 1
        mask, logps = _per_token(torch.tensor(pc + pr, dtype=torch.float32), lengths, width)
        fake = SimpleNamespace(
            model=SimpleNamespace(training=True), accelerator=_accelerator(), aux_loss_enabled=False, ld_alpha=None,
            precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
            beta=beta, label_smoothing=label_smoothing, use_weighting=False, args=SimpleNamespace(discopop_tau=0.05),
            _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
        )
        inputs = {
            "input_ids": torch.zeros(2 * b, width, dtype=torch.long), "attention_mask": torch.ones(2 * b, width),
            "completion_mask": mask, "ref_chosen_logps": torch.tensor(rc), "ref_rejected_logps": torch.tensor(rr),
        }
        return DPOTrainer._compute_loss(fake, _fake_model({width: logps}), inputs, False).item()

    return run


def _ours_mean(fn, **kwargs):
    return fn(*tensors(PC, PR, RC, RR), **kwargs)[0].mean().item()


EQUAL_TO_TRL = {
    "sigmoid": (dpo_loss, {}),
    "hinge": (hinge_loss, {}),
    "nca_pair": (nca_pair_loss, {}),
    "sppo_hard": (sppo_hard_loss, {}),
    "apo_zero": (apo_zero_loss, {}),
    "apo_down": (apo_down_loss, {}),
    "discopop": (discopop_loss, {}),
    "robust": (robust_dpo_loss, {"label_smoothing": 0.2}),
    "exo_pair": (exo_pair_loss, {"label_smoothing": 1e-3}),
    "aot": (aot_loss, {"label_smoothing": 0.1}),
    "aot_unpaired": (aot_pair_loss, {"label_smoothing": 0.1}),
    "bco_pair": (bco_pair_loss, {"delta": 0.0}),
}


@pytest.mark.parametrize("loss_type", sorted(EQUAL_TO_TRL))
def test_equal_to_trl_dpo_trainer(trl_dpo, loss_type):
    fn, kwargs = EQUAL_TO_TRL[loss_type]
    trl_kwargs = {"label_smoothing": kwargs["label_smoothing"]} if "label_smoothing" in kwargs else {}
    assert _ours_mean(fn, beta=BETA, **kwargs) == pytest.approx(trl_dpo(loss_type, **trl_kwargs), rel=1e-5)


def test_trl_sigmoid_ignores_label_smoothing(trl_dpo):
    """Known difference: TRL's `sigmoid` drops eps; ours is cDPO with eps."""
    trl = trl_dpo("sigmoid", label_smoothing=0.2)
    assert trl == pytest.approx(_ours_mean(dpo_loss, beta=BETA), rel=1e-5)
    assert trl != pytest.approx(_ours_mean(dpo_loss, beta=BETA, label_smoothing=0.2), rel=1e-3)


def test_trl_ipo_and_sigmoid_norm_are_length_normalized(trl_dpo):
    """Known difference: TRL's `ipo` (and `sigmoid_norm`) divide each log-ratio by its completion length. Ours
    take whatever is passed: fed mean log-probs they equal TRL; fed sums (our recipe's default) they do not."""
    lens = LEN_C + LEN_R
    means = [x / n for x, n in zip(PC + PR + RC + RR, lens + lens)]
    mean_args = tensors(means[0:3], means[3:6], means[6:9], means[9:12])
    trl_ipo = trl_dpo("ipo", lengths=lens)
    assert ipo_loss(*mean_args, beta=BETA)[0].mean().item() == pytest.approx(trl_ipo, rel=1e-5)
    assert _ours_mean(ipo_loss, beta=BETA) != pytest.approx(trl_ipo, rel=1e-3)
    trl_norm = trl_dpo("sigmoid_norm", lengths=lens)
    assert dpo_loss(*mean_args, beta=BETA)[0].mean().item() == pytest.approx(trl_norm, rel=1e-5)


def test_trl_bco_pair_has_no_shift(trl_dpo):
    """Known difference: TRL 1.16 computes BCO with delta = 0; with the paper's running-mean shift we differ."""
    trl = trl_dpo("bco_pair")
    assert _ours_mean(bco_pair_loss, beta=BETA, delta=0.0) == pytest.approx(trl, rel=1e-5)
    assert _ours_mean(bco_pair_loss, beta=BETA, delta=torch.tensor(0.3)) != pytest.approx(trl, rel=1e-3)


def test_equal_to_trl_kto_trainer():
    """KTOTrainer._compute_loss (calculate_KL, precomputed reference log-probs) vs kto_loss, mean over the batch."""
    pytest.importorskip("trl")
    from trl.trainer.kto_trainer import KTOTrainer

    label = torch.tensor([True, False, False])
    pol, ref, kl_pol, kl_ref = PC, RC, PR, RR
    main_mask, main_logps = _per_token(torch.tensor(pol), [1, 1, 1], 2)
    kl_mask, kl_logps = _per_token(torch.tensor(kl_pol), [2, 2, 2], 3)  # width 3 tells the fake model apart
    fake = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_accelerator(), calculate_KL=True, aux_loss_enabled=False,
        precompute_ref_logps=True, loss_type="kto", beta=BETA, desirable_weight=1.0, undesirable_weight=1.5,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )
    fake._compute_kl_logps = lambda model, batch: KTOTrainer._compute_kl_logps(fake, model, batch)
    inputs = {
        "input_ids": torch.zeros(3, 2, dtype=torch.long), "attention_mask": torch.ones(3, 2),
        "completion_mask": main_mask, "KL_input_ids": torch.zeros(3, 3, dtype=torch.long),
        "KL_attention_mask": torch.ones(3, 3), "KL_completion_mask": kl_mask, "label": label,
        "ref_logps": torch.tensor(ref), "ref_KL_logps": torch.tensor(kl_ref),
    }
    trl = KTOTrainer._compute_loss(fake, _fake_model({2: main_logps, 3: kl_logps}), inputs, False).item()
    ours = kto_loss(*tensors(pol, ref), label, *tensors(kl_pol, kl_ref), beta=BETA, undesirable_weight=1.5)[0]
    assert ours.mean().item() == pytest.approx(trl, rel=1e-5)


def test_equal_to_trl_cpo_trainer():
    """CPOTrainer.cpo_loss: `sigmoid` (with label smoothing) == cpo_loss; `simpo` == simpo_loss with gamma =
    simpo_gamma on mean log-probs; its reference-free `hinge`/`ipo` == ours with a zero reference."""
    pytest.importorskip("trl")
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    c, r = tensors(PC, PR)

    def trl(loss_type, label_smoothing=0.0, simpo_gamma=0.5, beta=BETA, chosen=c, rejected=r):
        fake = SimpleNamespace(alpha=0.0, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing,
                               simpo_gamma=simpo_gamma, accelerator=_accelerator())
        return CPOTrainer.cpo_loss(fake, chosen, rejected)

    losses, rc, rr = trl("sigmoid", label_smoothing=0.1)
    ours = cpo_loss(c, r, beta=BETA, label_smoothing=0.1)
    assert torch.allclose(ours[0], losses) and torch.allclose(ours[1], rc) and torch.allclose(ours[2], rr)
    mc, mr = c / torch.tensor(LEN_C), r / torch.tensor(LEN_R)
    assert torch.allclose(simpo_loss(mc, mr, beta=2.0, gamma=0.8)[0],
                          trl("simpo", simpo_gamma=0.8, beta=2.0, chosen=mc, rejected=mr)[0])
    zero = torch.zeros(3, dtype=torch.float64)
    assert torch.allclose(hinge_loss(c, r, zero, zero, beta=BETA)[0], trl("hinge")[0])
    assert torch.allclose(ipo_loss(c, r, zero, zero, beta=BETA)[0], trl("ipo")[0])


def test_orpo_is_minus_trl_odds_ratio_loss():
    """Known difference (sign convention only): TRL returns beta * log s(log odds ratio) and subtracts it."""
    pytest.importorskip("trl")
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    mc = torch.tensor([x / n for x, n in zip(PC, LEN_C)])  # float32: TRL casts to float
    mr = torch.tensor([x / n for x, n in zip(PR, LEN_R)])
    fake = SimpleNamespace(beta=BETA, accelerator=_accelerator())
    trl_losses, trl_c, trl_r, _, trl_log_odds_mean = ORPOTrainer.odds_ratio_loss(fake, mc, mr)
    losses, rc, rr, log_odds_ratio = orpo_loss(mc, mr, beta=BETA)
    assert torch.allclose(losses, -trl_losses)
    assert torch.allclose(rc, trl_c) and torch.allclose(rr, trl_r)
    assert log_odds_ratio.mean().item() == pytest.approx(trl_log_odds_mean.item())
