"""Batch order, padding collate, preference collate and packing."""

from __future__ import annotations

import random

import torch

from alignlab.data import (
    collate,
    collate_packed,
    collate_preference,
    make_batches,
    pack,
    packed_padding_fraction,
    padding_fraction,
)


def feature(n: int, row: int, prompt: int = 2) -> dict:
    mask = [False] * prompt + [True] * (n - prompt)
    return {"input_ids": [10 + row] * n, "response_mask": mask, "row": row}


def random_lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 400) for _ in range(n)]


def test_batches_are_deterministic_and_cover_every_index_once():
    lengths = random_lengths(1000)
    first = make_batches(lengths, batch_size=8, seed=3, epoch=1)
    assert first == make_batches(lengths, batch_size=8, seed=3, epoch=1)
    assert first != make_batches(lengths, batch_size=8, seed=3, epoch=2)
    assert first != make_batches(lengths, batch_size=8, seed=4, epoch=1)
    assert sorted(i for b in first for i in b) == list(range(1000))
    assert sorted(len(b) for b in first)[1:] == [8] * 124 and len(first) == 125


def test_drop_last_and_features_as_input():
    features = [feature(n, i) for i, n in enumerate(random_lengths(21))]
    batches = make_batches(features, batch_size=4, seed=0, epoch=0, drop_last=True)
    assert len(batches) == 5 and all(len(b) == 4 for b in batches)
    assert len(make_batches(features, batch_size=4, seed=0, epoch=0)) == 6


def test_length_grouping_reduces_padding():
    lengths = random_lengths(2000)
    grouped = padding_fraction(lengths, make_batches(lengths, batch_size=8, seed=0, epoch=0))
    shuffled = padding_fraction(lengths, make_batches(lengths, batch_size=8, seed=0, epoch=0,
                                                      group_by_length=False))
    assert shuffled > 0.3 and grouped < 0.05 and grouped < shuffled / 5


def test_grouped_batch_order_is_shuffled():
    lengths = list(range(1, 801))
    batches = make_batches(lengths, batch_size=4, seed=0, epoch=0)
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_collate_pads_on_the_right():
    batch = collate([feature(3, 1), feature(5, 2)], pad_id=0)
    assert batch["input_ids"].tolist() == [[11, 11, 11, 0, 0], [12] * 5]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert batch["response_mask"].tolist() == [[False, False, True, False, False],
                                               [False, False, True, True, True]]
    assert batch["row_ids"].tolist() == [1, 2]
    assert batch["input_ids"].dtype == torch.long and batch["response_mask"].dtype == torch.bool


def test_collate_preference_stacks_chosen_then_rejected():
    features = [{"prompt_ids": [1, 2], "chosen_ids": [3, 4, 9], "rejected_ids": [5, 9], "row": 7},
                {"prompt_ids": [1], "chosen_ids": [6, 9], "rejected_ids": [7, 8, 8, 9], "row": 8,
                 "chosen_mask": [True, True], "rejected_mask": [True, False, True, True]}]
    batch = collate_preference(features, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 9], [1, 6, 9, 0, 0], [1, 2, 5, 9, 0], [1, 7, 8, 8, 9]]
    assert batch["response_mask"].tolist() == [
        [False, False, True, True, True], [False, True, True, False, False],
        [False, False, True, True, False], [False, True, False, True, True]]
    assert batch["attention_mask"].sum(1).tolist() == [5, 3, 4, 5]
    assert batch["row_ids"].tolist() == [7, 8, 7, 8]


def test_pack_respects_max_length_and_keeps_every_feature():
    lengths = random_lengths(300, seed=1)
    features = [feature(n, i) for i, n in enumerate(lengths)]
    bins = pack(features, max_length=512)
    assert sorted(i for b in bins for i in b) == list(range(300))
    totals = [sum(lengths[i] for i in b) for b in bins]
    assert max(totals) <= 512
    assert len(bins) <= 1.15 * sum(lengths) / 512 + 1  # first-fit decreasing packs tightly


def test_collate_packed_resets_positions_per_sequence():
    features = [feature(4, 1), feature(3, 2), feature(5, 3)]
    bins = pack(features, max_length=8)
    assert bins == [[2, 1], [0]]  # 5 opens a row, 4 does not fit beside it, 3 fills the first row
    batch = collate_packed(features, bins, pad_id=0)
    assert "attention_mask" not in batch
    assert batch["input_ids"].tolist() == [[13] * 5 + [12] * 3, [11] * 4 + [0] * 4]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 1, 2, 3]]
    assert batch["response_mask"].tolist()[0] == [False, False, True, True, True, False, False, True]
    assert batch["response_mask"].tolist()[1] == [False, False, True, True, False, False, False, False]
    assert batch["seq_lens"] == [[5, 3], [4]] and batch["packed_row_ids"] == [[3, 2], [1]]
    assert packed_padding_fraction(batch) == 4 / 16


def test_packed_rows_match_separate_sequences_in_a_model(tiny_model_dir):
    """transformers builds a block-diagonal causal mask from restarting position ids, but only when there is
    no attention_mask AND no cache: the forward must pass use_cache=False."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    features = [{"input_ids": [5, 20, 30, 40], "response_mask": [False, True, True, True], "row": 1},
                {"input_ids": [7, 60, 70], "response_mask": [False, True, True], "row": 2}]
    batch = collate_packed(features, [[0, 1]], pad_id=0)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       use_cache=False).logits[0]
        alone = [model(input_ids=torch.tensor([f["input_ids"]])).logits[0] for f in features]
    torch.testing.assert_close(packed, torch.cat(alone), atol=1e-5, rtol=1e-4)
