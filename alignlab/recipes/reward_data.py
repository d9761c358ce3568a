"""Reward-model data: rows -> features -> batches for every objective of `alignlab rm` (see recipes/reward.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from alignlab.data import (
    PromptCompletion,
    TruncationReport,
    collate,
    collate_preference,
    collate_shared_prompt,
    make_batches,
    normalize,
    read_rows,
    tokenize_preference,
    tokenize_sft,
)
from alignlab.data.schemas import ATTRIBUTES
from alignlab.data.split import train_eval_split
from alignlab.errors import DataError
from alignlab.models.last_layer import last_mlp_at
from alignlab.models.shared_prompt import inner_model, shared_model_inputs, supports_shared_prompt
from alignlab.recipes.reward_eval import categories_of, pair_rows

if TYPE_CHECKING:
    from alignlab.recipes.reward import RewardConfig

log = logging.getLogger("alignlab")


# ---------------------------------------------------------------- data: rows -> features -> batches


class Pipeline(NamedTuple):
    """How one objective's rows become features and batches."""

    kind: str  # `normalize` kind of the rows
    featurize: Callable  # (examples, tokenizer, cfg, names) -> (features, TruncationReport)
    collate: Callable  # (features, pad_id) -> batch dict of tensors
    units: Callable  # feature -> how many loss terms it contributes (its weight in the step's mean)


@dataclass
class Prepared:
    """Everything the run needs from the data, computed before any model is loaded."""

    train_feats: list[dict]
    eval_feats: list[dict]
    eval_pairs: list[dict]  # held-out preference features for pairwise metrics ([] when the data has none)
    categories: list | None  # category of each eval pair (rm.category_column)
    reference: list[dict] | None  # completion rows the normalization is computed on
    attribute_names: list[str]
    summaries: dict[str, str]  # truncation report per split


def _lengths(cfg) -> dict:
    return {"max_length": cfg.data.max_length, "max_prompt_length": cfg.data.max_prompt_length}


def _margin(pair, column: str) -> float:
    """The Llama 2 margin of one pair from `rm.margin_column`."""
    if column == "margin":
        value = pair.margin
    elif column == "score":
        ok = pair.score_chosen is not None and pair.score_rejected is not None
        value = pair.score_chosen - pair.score_rejected if ok else None
    else:
        value = pair.extra.get(column)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"expected a number for the margin (rm.margin_column {column}), got {value!r}",
                        source=pair.source, row=pair.row, field="score_chosen/score_rejected" if column == "score"
                        else column)
    return float(value)


def _pair_feats(pairs, tokenizer, cfg, names):
    margins = {p.row: _margin(p, cfg.rm.margin_column) for p in pairs} if cfg.rm.margin_column else None
    feats, report = tokenize_preference(pairs, tokenizer, **_lengths(cfg))
    for f in feats:
        f["margin"] = margins[f["row"]] if margins else None
    return feats, report


def _pair_batch(feats, pad_id):
    batch = collate_preference(feats, pad_id)
    if feats[0].get("margin") is not None:
        batch["margin"] = torch.tensor([f["margin"] for f in feats], dtype=torch.float32)
    return batch


def shared_prompt_batch(feats, pad_id):
    """One row per pair, prompt + chosen + rejected, the prompt held once (`alignlab.data.collate_shared_prompt`:
    `segments` is 0 prompt, 1 chosen, 2 rejected, -1 padding), with the pairs' margins."""
    batch = collate_shared_prompt(feats, pad_id)
    if feats[0].get("margin") is not None:
        batch["margin"] = torch.tensor([f["margin"] for f in feats], dtype=torch.float32)
    return batch


def shares_prompt(model, max_tokens: int | None = None) -> bool:
    """Whether `shared_prompt_scores` can run `model` on rows of up to `max_tokens` tokens: a custom 4D mask
    (`alignlab.models.shared_prompt.supports_shared_prompt`) and a `score` head."""
    return supports_shared_prompt(model, max_tokens) and hasattr(inner_model(model), "score")


def shared_prompt_scores(model, batch) -> torch.Tensor:
    """(2B, K) scores of a `shared_prompt_batch`, chosen rows then rejected rows, equal (to float rounding) to
    `reward_scores` on the `collate_preference` batch: the 4D mask of `alignlab.models.shared_prompt` keeps the
    causal order and hides the chosen tokens from the rejected ones; each side is read where transformers' pooling
    reads it (its rightmost non-pad token). The prompt's FLOPs are spent once instead of twice.

    The model runs its own forward (so peft/LoRA wrappers work); a hook catches the score head's output at every
    position (B, T, K), which is cheap next to the backbone, and the two sides are read from it."""
    return shared_prompt_forward(model, batch, hidden=False)[0]


def shared_prompt_forward(model, batch, *, hidden: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`shared_prompt_scores` (2B, K) and, when `hidden`, the last hidden states (B, T, H) the score head read
    (every position valid: the last layer's MLP then runs in full), for the LM-head regularizer."""
    ids, seg = batch["input_ids"], batch["segments"]
    n_batch, n_tok = ids.shape
    t = torch.arange(n_tok, device=ids.device)
    not_pad = ids != inner_model(model).config.pad_token_id
    rows = torch.arange(n_batch, device=ids.device)
    last = torch.cat([(t * ((seg == side) & not_pad)).argmax(1) for side in (1, 2)])  # (2B,): chosen, rejected
    read = torch.cat([rows, rows]) * n_tok + last  # (2B,) flat positions: the only outputs read
    caught = []
    handle = inner_model(model).score.register_forward_hook(lambda _m, args, out: caught.append((args[0], out)))
    try:  # the last layer's MLP runs at the read positions only (`alignlab.models.last_layer`)
        with last_mlp_at(model, None if hidden else read):
            model(**shared_model_inputs(model, batch))
    finally:
        handle.remove()
    states, out = caught[0]
    return out.reshape(n_batch * n_tok, -1).index_select(0, read).float(), states if hidden else None  # (2B, K)


def _completion_feats(items: list[tuple], tokenizer, lengths: dict):
    """(prompt, completion, source, row) -> SFT features with `index` (position in `items`) and `row`."""
    examples = [PromptCompletion(p, c, src, i) for i, (p, c, src, _) in enumerate(items)]
    try:
        feats, report = tokenize_sft(examples, tokenizer, **lengths)
    except DataError as e:  # name the dataset row, not our index
        if e.row is None:
            raise
        raise DataError(str(e).split(": ", 1)[-1], source=e.source, row=items[e.row][3], field=e.field) from None
    for f in feats:
        f["index"], f["row"] = f["row"], items[f["row"]][3]
    return feats, report


def _dense_ranks(scores: list[float]) -> list[int]:
    """0 = best; equal scores share a rank (no comparison between them)."""
    distinct = sorted(set(scores), reverse=True)
    return [distinct.index(s) for s in scores]


def ranked_features(lists, tokenizer, lengths: dict):
    """One feature per prompt of `RankedList`s: its K completions (each scored once), their ranks and gold quality
    (the list's scores, or 1 for the best-ranked); `lengths`: max_length / max_prompt_length of `tokenize_sft`."""
    items = [(x.prompt, c, x.source, x.row) for x in lists for c in x.completions]
    owner = [(i, k) for i, x in enumerate(lists) for k in range(len(x.completions))]
    feats, report = _completion_feats(items, tokenizer, lengths)
    grouped: dict[int, list] = {}
    for f in feats:
        grouped.setdefault(owner[f["index"]][0], []).append(f)
    out = []
    for i, x in enumerate(lists):
        if len(grouped.get(i, ())) != len(x.completions):
            continue  # a completion lost every token to truncation: the list is dropped (and counted)
        ranks = x.ranks if x.ranks is not None else _dense_ranks(x.scores)
        gold = x.scores if x.scores is not None else [float(r == 0) for r in ranks]
        out.append({"items": grouped[i], "ranks": list(ranks), "gold": list(gold), "row": x.row})
    return out, report


def _ranked_feats(lists, tokenizer, cfg, names):
    return ranked_features(lists, tokenizer, _lengths(cfg))


def _ranked_batch(feats, pad_id):
    batch = collate([it for f in feats for it in f["items"]], pad_id)
    k = max(len(f["items"]) for f in feats)
    valid = torch.zeros(len(feats), k, dtype=torch.bool)
    ranks = torch.zeros(len(feats), k, dtype=torch.long)
    for p, f in enumerate(feats):
        valid[p, :len(f["items"])] = True
        ranks[p, :len(f["items"])] = torch.tensor(f["ranks"])
    return {**batch, "ranks": ranks, "valid": valid}


def _unpaired_feats(examples, tokenizer, cfg, names):
    items = [(e.prompt, e.completion, e.source, e.row) for e in examples]
    feats, report = _completion_feats(items, tokenizer, _lengths(cfg))
    for f in feats:
        f["label"] = examples[f["index"]].label
    return feats, report


def _label_batch(feats, pad_id):
    return {**collate(feats, pad_id), "labels": torch.tensor([f["label"] for f in feats], dtype=torch.bool)}


def _attribute_feats(examples, tokenizer, cfg, names):
    items = [(e.prompt, e.completion, e.source, e.row) for e in examples]
    feats, report = _completion_feats(items, tokenizer, _lengths(cfg))
    for f in feats:
        rated = examples[f["index"]].scores
        f["targets"] = [float(rated.get(a, 0.0)) for a in names]
        f["valid"] = [a in rated for a in names]
    return feats, report


def _attribute_batch(feats, pad_id):
    return {**collate(feats, pad_id), "targets": torch.tensor([f["targets"] for f in feats]),
            "valid": torch.tensor([f["valid"] for f in feats], dtype=torch.bool)}


def _step_feats(examples, tokenizer, cfg, names):
    """prompt ids + (step + separator) ids per step; the step's label sits at its last token. Steps that do
    not fit in max_length are cut (counted); a row with no step left is dropped (counted)."""
    limit = cfg.data.max_length
    report = TruncationReport(examples[0].source if examples else "", limit, total=len(examples))
    feats = []
    for x in examples:
        ids = tokenizer(x.prompt)["input_ids"][-(limit - 1):]
        positions = []
        for step in x.steps:
            piece = tokenizer(step + cfg.rm.step_separator, add_special_tokens=False)["input_ids"]
            if len(ids) + len(piece) > limit:
                break
            ids = ids + piece
            positions.append(len(ids) - 1)
        report.add(prompt_cut=False, completion_cut=len(positions) < len(x.steps), dropped=not positions)
        if positions:
            mask = [i in positions for i in range(len(ids))]
            feats.append({"input_ids": ids, "response_mask": mask, "row": x.row, "labels": x.labels[:len(positions)]})
    if examples and not feats:
        raise DataError(f"no step fits in max_length={limit}; raise --data.max-length", source=report.source)
    return feats, report


def _step_batch(feats, pad_id):
    """`response_mask` marks each step's last token; `step_labels (N,)` follow in row-major order."""
    return {**collate(feats, pad_id), "step_labels": torch.tensor([b for f in feats for b in f["labels"]])}


_one = lambda f: 1
PIPELINES = {
    "pairs": Pipeline("preference", _pair_feats, _pair_batch, _one),
    "shared_pairs": Pipeline("preference", _pair_feats, shared_prompt_batch, _one),
    "ranked": Pipeline("ranked", _ranked_feats, _ranked_batch, _one),
    "unpaired": Pipeline("unpaired", _unpaired_feats, _label_batch, _one),
    "attributes": Pipeline("attributes", _attribute_feats, _attribute_batch, _one),
    "steps": Pipeline("steps", _step_feats, _step_batch, lambda f: len(f["labels"])),
}


def _examples(rows, kind: str, cfg):
    return normalize(rows, kind, columns=cfg.data.columns or None)


def _attribute_names(cfg, train) -> list[str]:
    rated = {a for e in train for a in e.scores}
    names = cfg.rm.attributes or [a for a in ATTRIBUTES if a in rated]
    missing = [a for a in names if a not in rated]
    if missing or not names:
        raise DataError(f"no rated attribute {missing or ''} in the data (rated: {sorted(rated)})",
                        source=cfg.data.dataset)
    return names


def as_rows(feats: list[dict]) -> list[dict]:
    """Completion rows {input_ids, response_mask, row} of any objective's features."""
    if feats and "prompt_ids" in feats[0]:
        return pair_rows(feats)
    return [it for f in feats for it in f["items"]] if feats and "items" in feats[0] else feats


def _reference(cfg, tokenizer, train_feats, eval_feats):
    """The completions `rm.normalize_on` names, as rows (None: no normalization)."""
    where = cfg.rm.normalize_on
    if where == "none" or cfg.rm.objective == "process":
        return None
    if where in ("eval", "train"):
        return as_rows(eval_feats if where == "eval" and eval_feats else train_feats)
    rows = read_rows(where)
    try:
        return pair_rows(tokenize_preference(normalize(rows, "preference"), tokenizer, **_lengths(cfg))[0])
    except DataError:  # not paired data: use its completions
        items = [(e.prompt, e.completion, e.source, e.row) for e in normalize(rows, "sft")]
        return _completion_feats(items, tokenizer, _lengths(cfg))[0]


def prepare(cfg: RewardConfig, pipeline: Pipeline, tokenizer) -> Prepared:
    """Read, split (by row), normalize and tokenize every split, and the reference set."""
    rows = read_rows(cfg.data.dataset, split=cfg.data.split, subset=cfg.data.subset, max_rows=cfg.data.max_rows)
    train_rows, eval_rows = train_eval_split(rows, cfg.data.eval_fraction, seed=cfg.seed)
    train = _examples(train_rows, pipeline.kind, cfg)
    names = _attribute_names(cfg, train) if pipeline.kind == "attributes" else []
    train_feats, report = pipeline.featurize(train, tokenizer, cfg, names)
    summaries = {"train": report.summary()}
    eval_feats, eval_pairs, categories, pairs = [], [], None, []
    if eval_rows:
        held = _examples(eval_rows, pipeline.kind, cfg)
        eval_feats, report = pipeline.featurize(held, tokenizer, cfg, names)
        summaries["eval"] = report.summary()
        if pipeline.kind in ("preference", "unpaired"):
            pairs = held if pipeline.kind == "preference" else normalize(eval_rows, "preference",
                                                                        columns=cfg.data.columns or None)
            eval_pairs = eval_feats if pipeline.kind == "preference" else _pair_feats(pairs, tokenizer, cfg, [])[0]
    if cfg.rm.category_column and eval_pairs:
        categories = categories_of(pairs, eval_pairs, cfg.rm.category_column)
    reference = _reference(cfg, tokenizer, train_feats, eval_feats)
    return Prepared(train_feats, eval_feats, eval_pairs, categories, reference, names, summaries)


def epoch_batches(feats: list[dict], cfg: RewardConfig, epoch: int, *, shard=(0, 1)) -> list[list[dict]]:
    """This process's batches of features for the epoch: length-grouped, deterministic from (seed, epoch)."""
    lengths = [sum(len(i["input_ids"]) for i in f["items"]) if "items" in f else
               len(f["prompt_ids"]) + len(f["chosen_ids"]) + len(f["rejected_ids"]) if "prompt_ids" in f else
               len(f["input_ids"]) for f in feats]
    order = make_batches(lengths, batch_size=cfg.optim.batch_size, seed=cfg.seed, epoch=epoch)
    return [[feats[i] for i in idx] for idx in order[shard[0]::shard[1]]]


def chunks(feats: list[dict], n: int) -> list[list[dict]]:
    """`feats` split into at most n contiguous, non-empty micro-batches."""
    size = -(-len(feats) // n)
    return [feats[i:i + size] for i in range(0, len(feats), size)]


def step_stats(loss, correct, margins, scores) -> dict[str, torch.Tensor]:
    """The step's metrics as device tensors (Meter averages them over the logging interval)."""
    scores = torch.cat([s.reshape(-1) for s in scores])
    stats = {"loss": loss, "score_mean": scores.mean(), "score_std": scores.std() if scores.numel() > 1
             else torch.zeros_like(loss)}
    if correct:
        stats["accuracy"] = torch.cat(correct).float().mean()
    if margins:
        stats["margin"] = torch.cat(margins).float().mean()
    return stats
