"""Evaluate a saved reward model on preference pairs: accuracy, calibration, per-category sections.

Run:
    alignlab eval rm --model runs/rm --dataset pairs.jsonl
    alignlab eval rm --model runs/rm --dataset pairs.jsonl --category-column subset --output-dir runs/rm-eval

Ranked lists (prompt, completions, ranks or scores) are read as their best-vs-worst pairs for the pairwise
metrics, and also give accuracy over every ordered pair and acc@k: the gold value of the RM's pick among k of
the N completions, by the exact (unbiased) estimator of Askell et al. 2021 (`alignlab.eval.reward.acc_at_k`).

Reads and tokenizes every pair first (a bad row stops the command before the model is loaded), scores the
chosen and rejected sides of each pair, and writes `<output_dir>/metrics.json` and
`<output_dir>/reliability.png`, then prints a table. The model may be any sequence-classification reward
model (`alignlab rm` output or a plain transformers one; an ensemble's heads are combined with
`--ensemble-mode`) or a causal LM, scored by its mean completion log-prob (the `imitation` baseline).

Calibration uses the raw scores: under the Bradley-Terry model the RM was trained with,
P(chosen preferred) = sigmoid(r_chosen - r_rejected); the stored normalization (gain, bias) changes the
scale and so would change the probabilities. Each pair is counted in both orders (see
`alignlab.eval.reward.preference_probabilities`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from alignlab.data import collate, detect_schema, make_batches, normalize, read_rows, tokenize_preference
from alignlab.errors import ConfigError, DataError
from alignlab.eval.reward import (
    accuracy_by_category,
    best_of_n_curve,
    ensemble_agreement,
    expected_calibration_error,
    pairwise_accuracy,
    preference_probabilities,
    reliability_diagram,
    score_stats,
    section_score,
)
from alignlab.losses.reward import gated_scores
from alignlab.models import compute_logprobs, load_model, load_tokenizer
from alignlab.models.reward import load_gating, load_reward_model, prompt_hidden_states, reward_scores, step_scores
from alignlab.rewards.ensemble import combine, disagreement

log = logging.getLogger("alignlab")

ScoreFn = Callable[[dict], torch.Tensor]
"""A batch (input_ids, attention_mask, response_mask) -> (rows, K) float32 scores."""


@dataclass
class RewardEvalConfig:
    """Score preference pairs with a saved reward model; accuracy, calibration and per-category sections."""

    model: str = "runs/rm"
    """Reward model directory (`alignlab rm` output, any sequence-classification model, or a causal LM)."""
    dataset: str = ""
    """Preference pairs: a .jsonl/.json/.parquet/.csv file or dataset directory (any paired schema)."""
    output_dir: str = ""
    """Where metrics.json and reliability.png go (default: `<model>/eval`)."""
    split: str = "train"
    """Split to read when the dataset has several."""
    columns: dict[str, str] = field(default_factory=dict)
    """Map our field names to yours, e.g. `--columns chosen good rejected bad`."""
    max_rows: int | None = None
    """Evaluate at most this many rows."""
    max_length: int = 512
    """Longest prompt + completion; longer pairs are truncated (and counted), as in training."""
    max_prompt_length: int | None = None
    """Longest prompt (its end is kept)."""
    category_column: str | None = None
    """Column naming each pair's category: accuracy per category plus their mean (RewardBench-style)."""
    ensemble_mode: Literal["mean", "min", "mean_minus_std"] = "mean"
    """How an ensemble's heads are combined into one score."""
    lam: float = 1.0
    """Weight of the std in `mean_minus_std`."""
    batch_size: int = 32
    """Sequences per forward pass."""
    n_bins: int = 10
    """Bins of the calibration error and the reliability diagram."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of the weights as loaded."""
    trust_remote_code: bool = False
    """Run model code shipped with the checkpoint."""

    def __post_init__(self):
        for name in ("batch_size", "n_bins"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lam < 0:
            raise ConfigError(f"lam must be >= 0, got {self.lam}")


# ---------------------------------------------------------------- scoring (shared with recipes/reward.py)


def pair_rows(features: list[dict]) -> list[dict]:
    """Preference features -> completion rows: every pair's chosen row, then every pair's rejected row."""
    rows = []
    for side in ("chosen", "rejected"):
        for f in features:
            mask = f.get(f"{side}_mask") or [True] * len(f[f"{side}_ids"])
            rows.append({"input_ids": f["prompt_ids"] + f[f"{side}_ids"],
                         "response_mask": [False] * len(f["prompt_ids"]) + list(mask), "row": f["row"]})
    return rows


@torch.no_grad()
def score_rows(score_fn: ScoreFn, rows: list[dict], pad_id: int, *, batch_size: int, device=None) -> torch.Tensor:
    """(N, K) scores of completion rows {input_ids, response_mask, row}, in input order; batches are
    grouped by length so little is padded."""
    lengths = [len(r["input_ids"]) for r in rows]
    out: list[torch.Tensor | None] = [None] * len(rows)
    for idx in make_batches(lengths, batch_size=batch_size, seed=0, epoch=0):
        batch = collate([rows[i] for i in idx], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()} if device is not None else batch
        scores = score_fn(batch).float().cpu()
        for j, i in enumerate(idx):
            out[i] = scores[j]
    return torch.stack(out) if out else torch.zeros(0, 1)


def score_pairs(score_fn: ScoreFn, features: list[dict], pad_id: int, *, batch_size: int,
                device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (P, K), rejected (P, K)) scores of preference features."""
    scores = score_rows(score_fn, pair_rows(features), pad_id, batch_size=batch_size, device=device)
    return scores[:len(features)], scores[len(features):]


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor, *, mode: str = "mean", lam: float = 1.0,
                 categories: list | None = None, out_dir: str | Path | None = None, n_bins: int = 10) -> dict:
    """Every pairwise metric of (P, K) scores (K > 1: ensemble heads, combined with `mode`); writes
    reliability.png to `out_dir` when given."""
    c = combine(chosen, mode=mode, lam=lam) if chosen.shape[1] > 1 else chosen[:, 0]
    r = combine(rejected, mode=mode, lam=lam) if rejected.shape[1] > 1 else rejected[:, 0]
    probs, outcomes = preference_probabilities(c, r)
    out = {"pairs": len(c), "accuracy": pairwise_accuracy(c, r), "margin_mean": float((c - r).mean()),
           "ece": expected_calibration_error(probs, outcomes, n_bins),
           "score": score_stats(torch.cat([c, r]))}
    if chosen.shape[1] > 1:
        out["ensemble"] = {"mode": mode, "lam": lam, **ensemble_agreement(chosen, rejected),
                           "disagreement_mean": float(disagreement(torch.cat([chosen, rejected])).mean())}
    if categories is not None:
        by_category = accuracy_by_category(c, r, categories)
        out["by_category"] = by_category
        out["category_score"] = section_score(by_category)["score"]
    if out_dir is not None:
        out["reliability_png"] = str(reliability_diagram(probs, outcomes, Path(out_dir) / "reliability.png",
                                                         n_bins=n_bins))
    return out


def table(metrics: dict) -> str:
    """The metrics as a small text table."""
    lines = [f"{'metric':<24} {'value':>10}", f"{'pairs':<24} {metrics['pairs']:>10d}",
             f"{'accuracy':<24} {metrics['accuracy']:>10.3f}", f"{'margin mean':<24} {metrics['margin_mean']:>10.3f}",
             f"{'ECE':<24} {metrics['ece']:>10.3f}",
             f"{'score mean / std':<24} {metrics['score']['mean']:>5.2f} / {metrics['score']['std']:.2f}"]
    if "ensemble" in metrics:
        lines.append(f"{'ensemble unanimous':<24} {metrics['ensemble']['unanimous']:>10.3f}")
    for name, row in metrics.get("by_category", {}).items():
        lines.append(f"{'  ' + name[:20]:<24} {row['accuracy']:>10.3f}  (n={row['count']})")
    if "category_score" in metrics:
        lines.append(f"{'category mean':<24} {metrics['category_score']:>10.3f}")
    if "ranked" in metrics:
        curve = metrics["ranked"]["best_of_n"]
        lines.append(f"{'ranked pairs accuracy':<24} {metrics['ranked']['pairwise_accuracy']:>10.3f}")
        lines += [f"{f'acc@{k} (oracle)':<24} {rm:>10.3f}  ({best:.3f})"
                  for k, rm, best in zip(curve["k"], curve["rm"], curve["oracle"])]
    return "\n".join(lines)


def is_causal_lm(path: str) -> bool:
    """True when the model directory holds a causal LM (scored by mean log-prob) rather than a classifier."""
    from transformers import AutoConfig

    archs = getattr(AutoConfig.from_pretrained(path), "architectures", None) or []
    if any(a.endswith("ForTokenClassification") for a in archs):
        raise ConfigError(f"{path} is a process reward model (one logit per step): its step accuracy is in the "
                          "eval.json of its `alignlab rm --rm.objective process` run, not in pairwise evaluation")
    return any(a.endswith("ForCausalLM") for a in archs)


def load_scorer(path: str, *, dtype: str = "float32", trust_remote_code: bool = False):
    """(model, score_fn) for a saved reward model (gated when it has a gating network) or a causal LM."""
    if is_causal_lm(path):
        model = load_model(path, dtype=dtype, trust_remote_code=trust_remote_code).eval()
        return model, scorer(model, "imitation")
    model = load_reward_model(path, dtype=dtype, trust_remote_code=trust_remote_code).eval()
    gating = load_gating(path)
    if gating is not None:
        model.alignlab_gating = gating.to(dtype=torch.float32).eval()
    return model, scorer(model, "gating" if gating is not None else "reward")


def categories_of(pairs: list, features: list[dict], column: str) -> list:
    """Each feature's category from its pair's `extra[column]`; a pair without it -> DataError."""
    by_row = {}
    for p in pairs:
        if p.extra.get(column) is None:
            raise DataError(f"missing (asked for by --category-column {column})", source=p.source, row=p.row,
                            field=column)
        by_row[p.row] = p.extra[column]
    return [by_row[f["row"]] for f in features]


def ranked_lists(rows, cfg: RewardEvalConfig, tokenizer) -> list[dict] | None:
    """Ranked-list features when the rows are ranked lists (prompt, completions, ranks/scores), else None."""
    ours = {theirs: name for name, theirs in cfg.columns.items()}
    if detect_schema({ours.get(k, k): v for k, v in rows[0].data.items()}) != "ranked":
        return None
    from alignlab.recipes.reward_data import ranked_features  # (reward_data imports this module)

    lengths = {"max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length}
    feats, report = ranked_features(normalize(rows, "ranked", columns=cfg.columns or None), tokenizer, lengths)
    log.info("ranked lists: %s", report.summary())
    return feats


def main(cfg: RewardEvalConfig) -> dict:
    """Score the pairs; write metrics.json + reliability.png; print and return the metrics."""
    if not cfg.dataset:
        raise ConfigError("--dataset is required: a file or directory of preference pairs")
    out_dir = Path(cfg.output_dir or Path(cfg.model) / "eval")
    # 1. read, normalize, tokenize: every row-level error before the model is loaded
    rows = read_rows(cfg.dataset, split=cfg.split, max_rows=cfg.max_rows)
    pairs = normalize(rows, "preference", columns=cfg.columns or None)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    features, report = tokenize_preference(pairs, tokenizer, max_length=cfg.max_length,
                                           max_prompt_length=cfg.max_prompt_length)
    log.info("eval data: %s", report.summary())
    categories = categories_of(pairs, features, cfg.category_column) if cfg.category_column else None
    lists = ranked_lists(rows, cfg, tokenizer)
    # 2. score both sides of every pair (ranked lists: their best and worst completion)
    model, score_fn = load_scorer(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    chosen, rejected = score_pairs(score_fn, features, tokenizer.pad_token_id, batch_size=cfg.batch_size)
    # 3. metrics, plot, table; ranked lists add every ordered pair and acc@k (best of k of N)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = pair_metrics(chosen, rejected, mode=cfg.ensemble_mode, lam=cfg.lam, categories=categories,
                           out_dir=out_dir, n_bins=cfg.n_bins)
    if lists:
        metrics["ranked"] = ranked_report(score_fn, lists, tokenizer.pad_token_id, batch_size=cfg.batch_size)
    metrics.update(model=str(cfg.model), dataset=str(cfg.dataset), truncation=report.summary())
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(table(metrics))
    print(f"\nmetrics: {out_dir / 'metrics.json'}\nreliability diagram: {metrics['reliability_png']}")
    return metrics


# ---------------------------------------------------------------- end-of-training evaluation (alignlab rm)


def prompt_view(batch, n: int | None = None) -> dict:
    """The first n rows with attention cut after the prompt (the tokens before the first response token): the
    causal model's hidden state at the last prompt token is that of the prompt alone."""
    n = batch["input_ids"].shape[0] if n is None else n
    response = batch["response_mask"][:n]
    start = torch.where(response.any(1), response.int().argmax(1), batch["attention_mask"][:n].sum(1))  # (n,)
    keep = torch.arange(response.shape[1], device=response.device)[None, :] < start[:, None]
    return {"input_ids": batch["input_ids"][:n], "attention_mask": batch["attention_mask"][:n] * keep}


def scorer(model, objective: str, *, gated: bool = True) -> ScoreFn:
    """batch -> (rows, K) scores: mean completion log-prob (imitation), the gated score (gating, when
    `gated`), else the reward heads' raw outputs."""
    if objective == "imitation":
        return lambda batch: compute_logprobs(model, batch).mean_logprobs[:, None]
    if objective == "gating" and gated:
        return lambda batch: gated_scores(model.alignlab_gating(prompt_hidden_states(model, prompt_view(batch))),
                                          reward_scores(model, batch))[:, None]
    return lambda batch: reward_scores(model, batch)


def ranked_report(score_fn: ScoreFn, feats: list[dict], pad_id: int, *, batch_size: int, device=None) -> dict:
    """Ranked lists: accuracy over every ordered pair of each list, and the best-of-n curve (acc@k) of the
    lists with the most common K, gold = the list's scores (or 1 for the best-ranked completion)."""
    items = [it for f in feats for it in f["items"]]
    flat = score_rows(score_fn, items, pad_id, batch_size=batch_size, device=device)[:, 0]
    per_list, start = [], 0
    for f in feats:
        per_list.append(flat[start:start + len(f["items"])])
        start += len(f["items"])
    better, worse = [], []
    for f, s in zip(feats, per_list):
        for i, ri in enumerate(f["ranks"]):
            for j, rj in enumerate(f["ranks"]):
                if ri < rj:
                    better.append(s[i])
                    worse.append(s[j])
    k = max({len(f["items"]) for f in feats}, key=lambda n: sum(len(f["items"]) == n for f in feats))
    same = [i for i, f in enumerate(feats) if len(f["items"]) == k]
    scores = torch.stack([per_list[i] for i in same])
    gold = torch.tensor([feats[i]["gold"] for i in same], dtype=torch.float64)
    return {"lists": len(feats), "pairwise_accuracy": pairwise_accuracy(torch.stack(better), torch.stack(worse)),
            "best_of_n": best_of_n_curve(scores, gold)}


def attribute_report(score_fn: ScoreFn, feats: list[dict], pad_id: int, names: list[str], *, batch_size: int,
                     device=None) -> dict:
    """Per attribute: RMSE and Pearson correlation of predicted vs rated scores (rated entries only)."""
    pred = score_rows(score_fn, feats, pad_id, batch_size=batch_size, device=device).double()
    target = torch.tensor([f["targets"] for f in feats], dtype=torch.float64)
    valid = torch.tensor([f["valid"] for f in feats], dtype=torch.bool)
    out = {}
    for k, name in enumerate(names):
        p, t = pred[valid[:, k], k], target[valid[:, k], k]
        corr = float(torch.corrcoef(torch.stack([p, t]))[0, 1]) if len(p) > 1 else float("nan")
        out[name] = {"rmse": float(((p - t) ** 2).mean().sqrt()), "pearson": corr, "count": len(p)}
    return out


@torch.no_grad()
def process_report(model, feats: list[dict], collate_fn, pad_id: int, *, batch_size: int, device=None) -> dict:
    """Step accuracy (logit > 0 vs label) and solution accuracy (every step predicted correct vs every step
    labeled correct)."""
    step_ok, sol_ok = [], []
    for start in range(0, len(feats), batch_size):
        batch = collate_fn(feats[start:start + batch_size], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()} if device is not None else batch
        pred = (step_scores(model, batch, batch["response_mask"]) > 0).cpu()  # (N,) row-major
        labels = batch["step_labels"].cpu()
        step_ok.append((pred == labels).float())
        counts = batch["response_mask"].sum(1).cpu().tolist()
        for p, y in zip(pred.split(counts), labels.split(counts)):
            sol_ok.append(torch.tensor([float(bool(p.all()) == bool(y.all()))]))
    return {"steps": int(sum(len(s) for s in step_ok)), "step_accuracy": float(torch.cat(step_ok).mean()),
            "solution_accuracy": float(torch.cat(sol_ok).mean())}


def final_eval(model, data, cfg, collate_fn, pad_id: int, out_dir, device=None) -> dict:
    """eval.json of an `alignlab rm` run: pairwise metrics on the held-out pairs (when the data has pairs)
    and the objective's own metrics (ranked lists, attribute regression, process steps)."""
    model.eval()
    objective, size = cfg.rm.objective, cfg.rm.eval_batch_size
    result: dict = {"objective": objective, "truncation": data.summaries}
    if data.eval_pairs:
        chosen, rejected = score_pairs(scorer(model, objective), data.eval_pairs, pad_id, batch_size=size,
                                       device=device)
        result["pairs"] = pair_metrics(chosen, rejected, mode=cfg.rm.ensemble_mode, lam=cfg.rm.lam,
                                       categories=data.categories, out_dir=out_dir)
    if data.eval_feats and objective == "kwise":
        result["ranked"] = ranked_report(scorer(model, objective), data.eval_feats, pad_id, batch_size=size,
                                         device=device)
    if data.eval_feats and objective == "attributes":
        result["attributes"] = attribute_report(scorer(model, objective), data.eval_feats, pad_id,
                                                data.attribute_names, batch_size=size, device=device)
    if data.eval_feats and objective == "process":
        result["process"] = process_report(model, data.eval_feats, collate_fn, pad_id, batch_size=size,
                                           device=device)
    model.train()
    return result
