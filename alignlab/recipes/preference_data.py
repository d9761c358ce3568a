"""Data of the preference recipe: examples -> token features -> length-grouped steps of collated micro-batches,
sDPO partitions and stages, and the precomputed reference tables of the features.

Three kinds, all giving features with `index` (their position, the row of a precomputed reference table):
- `preference` (pairwise and reference-free losses): `tokenize_preference` features; a batch is 2B rows,
  chosen then rejected (`collate_preference`), so both go through the model in one forward, or with `shared`
  B rows of prompt + chosen + rejected, the prompt held once (`collate_shared_prompt`; the log-probs read as
  2B rows). ODPO features carry `offset` = margin, or score_chosen - score_rejected.
- `unpaired` (KTO): each completion is paired with a mismatched one, the completion of another example
  (shift by one in a seeded order), tokenized after *this* prompt: the KL row (x_i, y_j) of KTO's reference
  point. Fixed once, so reference log-probs of the KL rows can be precomputed. A batch is the B completion
  rows then the B KL rows; `desirable (B,)`.
- `ranked` (RRHF, PRO): a feature holds its list's tokenized completions (`items`) and scores (higher =
  better; `-rank` when only ranks are given). A batch flattens the lists into one forward and carries
  `slot` (row -> b * K + k), `scores (B, K)` and `valid (B, K)`.
Every batch has `nll_rows`: the rows whose NLL the RPO/CPO/ORPO/RRHF/PRO terms add (chosen or best rows).
"""

from __future__ import annotations

import functools
import logging
import random

import torch

from alignlab.config import DataConfig
from alignlab.data import (
    PreferencePair,
    PromptCompletion,
    collate,
    collate_preference,
    collate_shared_prompt,
    make_batches,
    normalize,
    read_rows,
    shared_prompt_length,
    tokenize_preference,
    tokenize_sft,
)
from alignlab.data.split import train_eval_split
from alignlab.errors import ConfigError, DataError
from alignlab.models.reference import precomputed_reference

log = logging.getLogger("alignlab")
MAX_LIST = 10_000  # completions per ranked list (flat ids below are i * MAX_LIST + k)


def load_examples(data: DataConfig, kind: str, *, seed: int, offsets: bool = False):
    """Read, normalize and split; every row-level error surfaces here, before a model is loaded.

    `offsets`: ODPO needs a positive score gap (margin, or score_chosen - score_rejected) on every pair."""
    rows = read_rows(data.dataset, split=data.split, subset=data.subset, max_rows=data.max_rows)
    examples = normalize(rows, kind, columns=data.columns or None)
    for ex in examples if offsets else []:
        gap = ex.margin if ex.margin is not None else (
            None if ex.score_chosen is None or ex.score_rejected is None else ex.score_chosen - ex.score_rejected)
        if gap is None or not gap > 0:
            raise DataError(f"ODPO needs a positive score gap (margin, or score_chosen - score_rejected), got "
                            f"{gap}", source=ex.source, row=ex.row, field="score_chosen")
        ex.margin = gap
    return train_eval_split(examples, data.eval_fraction, seed=seed)


def featurize(examples: list, kind: str, tokenizer, data: DataConfig, *, seed: int) -> list[dict]:
    """Token features (with `index`) of `kind` examples; see the module docstring."""
    if not examples:
        return []
    kw = dict(max_length=data.max_length, max_prompt_length=data.max_prompt_length)
    if kind == "ranked":
        feats = ranked_features(examples, tokenizer, kw)
    elif kind == "unpaired":  # pair each completion with a mismatched one: the KL row (x_i, y_j)
        order = list(range(len(examples)))
        random.Random(f"kto:{seed}").shuffle(order)
        partner = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}
        pairs = [PreferencePair(ex.prompt, ex.completion, examples[partner[i]].completion, source=ex.source, row=i)
                 for i, ex in enumerate(examples)]
        feats, report = tokenize_preference(pairs, tokenizer, **kw)
        for f in feats:
            f["desirable"], f["row"] = examples[f["row"]].label, examples[f["row"]].row
        log.info("data: %s", report.summary())
    else:
        feats, report = tokenize_preference(examples, tokenizer, **kw)
        log.info("data: %s", report.summary())
        margins = {ex.row: ex.margin for ex in examples}
        for f in feats:
            if margins[f["row"]] is not None:
                f["offset"] = float(margins[f["row"]])
    for i, f in enumerate(feats):
        f["index"] = i
    return feats


def ranked_features(lists: list, tokenizer, kw: dict) -> list[dict]:
    """One feature per list: its completions tokenized after the prompt, and their scores (higher = better).
    A completion dropped by truncation leaves its list; a list left with fewer than 2 is dropped."""
    items = [PromptCompletion(lst.prompt, c, source=lst.source, row=MAX_LIST * i + k)
             for i, lst in enumerate(lists) for k, c in enumerate(lst.completions)]
    feats, report = tokenize_sft(items, tokenizer, **kw)
    log.info("data: %s", report.summary())
    grouped: dict[int, list] = {}
    for f in feats:
        i, k = divmod(f["row"], MAX_LIST)
        scores = lists[i].scores or [-float(r) for r in lists[i].ranks]
        grouped.setdefault(i, []).append(({**f, "row": lists[i].row}, scores[k]))
    return [{"items": [f for f, _ in g], "scores": [s for _, s in g], "row": lists[i].row}
            for i, g in grouped.items() if len(g) >= 2]


def collate_features(feats: list[dict], pad_id: int, shared: bool = False) -> dict:
    """One micro-batch of any kind (see the module docstring); `shared`: pairs as shared-prompt rows."""
    index = torch.tensor([f["index"] for f in feats])
    if "items" not in feats[0]:
        batch = (collate_shared_prompt if shared else collate_preference)(feats, pad_id)
        batch.update(index=index, nll_rows=torch.arange(len(feats)))
        for key in ("offset", "desirable"):
            if all(key in f for f in feats):
                batch[key] = torch.tensor([f[key] for f in feats])
        return batch
    width = max(len(f["items"]) for f in feats)
    batch = collate([item for f in feats for item in f["items"]], pad_id)
    scores = torch.zeros(len(feats), width)
    valid = torch.zeros(len(feats), width, dtype=torch.bool)
    slot, best, start = [], [], 0
    for b, f in enumerate(feats):
        k = len(f["scores"])
        scores[b, :k], valid[b, :k] = torch.tensor(f["scores"], dtype=torch.float32), True
        slot += [b * width + j for j in range(k)]
        best.append(start + max(range(k), key=f["scores"].__getitem__))
        start += k
    batch.update(index=index, scores=scores, valid=valid, slot=torch.tensor(slot), nll_rows=torch.tensor(best))
    return batch


def epoch_batches(feats: list[dict], *, batch_size: int, grad_accum: int, seed: int, epoch: int, pad_id: int,
                  rank: int = 0, world: int = 1, shared: bool = False) -> list[list[dict]]:
    """This process's steps for the epoch, each a list of (up to) `grad_accum` collated micro-batches;
    grouped by the length of their rows (shared-prompt rows with `shared`), deterministic from (seed, epoch)."""
    lengths = [max(len(i["input_ids"]) for i in f["items"]) if "items" in f else shared_prompt_length(f) if shared
               else len(f["prompt_ids"]) + max(len(f["chosen_ids"]), len(f["rejected_ids"])) for f in feats]
    order = make_batches(lengths, batch_size=batch_size, seed=seed, epoch=epoch)
    steps = []
    for idx in order[rank::world]:
        parts = [p for p in (idx[k::grad_accum] for k in range(grad_accum)) if p]
        steps.append([collate_features([feats[i] for i in p], pad_id, shared) for p in parts])
    return steps


def partitions(feats: list[dict], stages: int, *, seed: int) -> list[list[dict]]:
    """sDPO: a seeded random split of the training features into `stages` parts (one part without sDPO)."""
    order = list(range(len(feats)))
    random.Random(f"sdpo:{seed}").shuffle(order)
    parts = [[feats[i] for i in sorted(order[s * len(order) // stages:(s + 1) * len(order) // stages])]
             for s in range(stages)]
    if any(not p for p in parts):
        raise ConfigError(f"pref.sdpo_stages={stages} leaves a stage without data ({len(feats)} training examples)")
    return parts


def stage_of(step: int, stages: int, max_steps: int) -> int:
    """sDPO stage of an optimizer step: the steps are split evenly between the stages."""
    return step * stages // max_steps


def stage_references(cfg, model, live, tokenizer, accelerator, feats: dict[str, list], n_train: int,
                     shared: bool = False):
    """The train/eval references of a (sDPO) stage and their cache files, for a `PreferenceConfig`: the live one
    (copy, LoRA base), none (reference-free loss), or log-probs of `feats` under `model` as it is now,
    precomputed once (in shared-prompt rows with `shared`) and cached (`models.reference.precomputed_reference`)."""
    if live is not None or cfg.reference_mode == "none":
        return {"train": live, "eval": live}, {}
    refs, files = {"eval": None}, {}
    collate_fn = functools.partial(collate_features, pad_id=tokenizer.pad_token_id, shared=shared)
    for split, split_feats in ((k, v) for k, v in feats.items() if v):
        refs[split], path = precomputed_reference(
            accelerator.unwrap_model(model), split_feats, collate_fn,
            tokenizer=tokenizer, n_rows=n_train if split == "train" else len(split_feats),
            batch_size=cfg.optim.batch_size, cache_dir=cfg.pref.ref_cache_dir, device=accelerator.device,
            autocast=accelerator.autocast, progress=cfg.log.progress, max_length=cfg.data.max_length,
            max_prompt_length=cfg.data.max_prompt_length, precision=cfg.model.mixed_precision, kind=cfg.data_kind,
            **({"layout": "shared_prompt"} if shared else {}))  # same numbers to float rounding: own cache entry
        files[split] = str(path)
    return refs, files
