"""Token features -> batches: length-grouped batch order, right-padding collate, and packing.

- `make_batches` gives the epoch's batches as lists of feature indices, deterministic from (seed, epoch).
  With `group_by_length` it shuffles, sorts by length inside mega-chunks of 50 batches, cuts batches, then
  shuffles the batch order: batches hold similar lengths (little padding) yet arrive in random order.
- `collate` right-pads features into `input_ids (B,T)`, `attention_mask (B,T)`, `response_mask (B,T)`,
  `row_ids (B,)`. `collate_preference` puts prompt+chosen rows first and prompt+rejected rows after them in
  one batch of 2B rows, so both go through the model in a single forward. `collate_shared_prompt` holds each
  pair's prompt once instead: one row of prompt + chosen + rejected per pair, with `segments` from which
  `alignlab.models.shared_prompt` builds the attention mask that hides the chosen tokens from the rejected ones.
- `pack` bins whole features into rows of at most `max_length` tokens (first-fit decreasing);
  `collate_packed` lays them out with `position_ids` that restart at 0 for each sequence and no
  `attention_mask`, from which transformers builds a block-diagonal causal mask (no attention across
  sequences). transformers does this only when the forward also has no cache: call the model with
  `use_cache=False` (otherwise sequences in a row silently attend to each other).
"""

from __future__ import annotations

import random

import torch

from alignlab.errors import DataError

MEGA_BATCHES = 50


def feature_length(feature: dict) -> int:
    """Tokens of an SFT feature, or prompt + longer completion of a preference feature."""
    if "input_ids" in feature:
        return len(feature["input_ids"])
    return len(feature["prompt_ids"]) + max(len(feature["chosen_ids"]), len(feature["rejected_ids"]))


def make_batches(lengths: list[int] | list[dict], *, batch_size: int, seed: int, epoch: int,
                 group_by_length: bool = True, drop_last: bool = False) -> list[list[int]]:
    """Batches of indices into `lengths` (ints, or features to measure); the same for the same seed+epoch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = [x if isinstance(x, int) else feature_length(x) for x in lengths]
    rng = random.Random(f"{seed}:{epoch}")  # string seeds hash with sha512: stable across processes
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        chunk = batch_size * MEGA_BATCHES
        order = [i for start in range(0, len(order), chunk)
                 for i in sorted(order[start:start + chunk], key=lambda i: -lengths[i])]
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if group_by_length:
        rng.shuffle(batches)
    return batches


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of the padded batch area (batch size x longest member) that is padding."""
    area = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 1.0 - real / area if area else 0.0


def collate(features: list[dict], pad_id: int) -> dict:
    """Right-pad features {input_ids, response_mask, row} into a batch of tensors."""
    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(features), width), dtype=torch.long)
    response_mask = torch.zeros((len(features), width), dtype=torch.bool)
    for b, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[b, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        attention_mask[b, :n] = 1
        response_mask[b, :n] = torch.tensor(f["response_mask"], dtype=torch.bool)
    row_ids = torch.tensor([f["row"] for f in features], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask,
            "row_ids": row_ids}


def collate_preference(features: list[dict], pad_id: int) -> dict:
    """One batch of 2B rows: rows [0, B) are prompt+chosen, rows [B, 2B) prompt+rejected, for the same B
    pairs in the same order; `response_mask` covers the completions; `row_ids (2B,)`."""
    rows = []
    for side in ("chosen", "rejected"):
        for f in features:
            prompt, completion = f["prompt_ids"], f[f"{side}_ids"]
            mask = f.get(f"{side}_mask") or [True] * len(completion)
            rows.append({"input_ids": prompt + completion, "response_mask": [False] * len(prompt) + mask,
                         "row": f["row"]})
    batch = collate(rows, pad_id)
    batch["response_mask"][:, 0] = False  # the first token has no context to be predicted from
    return batch


def collate_shared_prompt(features: list[dict], pad_id: int) -> dict:
    """One row per pair: prompt + chosen + rejected, the prompt held once (B rows instead of 2B).

    `position_ids` of the rejected tokens restart where the prompt ends, so each completion sits at the positions
    it has in its own prompt + completion row; `segments (B, T)` is 0 prompt, 1 chosen, 2 rejected, -1 padding;
    `response_mask (B, T)` marks the counted tokens of both completions (`chosen_mask`/`rejected_mask`);
    `attention_mask (B, T)` the real tokens (for counting: the model gets the 4D mask built from `segments`).
    """
    lengths = [(len(f["prompt_ids"]), len(f["chosen_ids"]), len(f["rejected_ids"])) for f in features]
    width = max(sum(n) for n in lengths)
    input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(features), width), dtype=torch.long)
    segments = torch.full((len(features), width), -1, dtype=torch.long)
    response_mask = torch.zeros((len(features), width), dtype=torch.bool)
    for b, (f, (n_p, n_c, n_r)) in enumerate(zip(features, lengths)):
        end = n_p + n_c + n_r
        input_ids[b, :end] = torch.tensor(f["prompt_ids"] + f["chosen_ids"] + f["rejected_ids"], dtype=torch.long)
        position_ids[b, :n_p + n_c] = torch.arange(n_p + n_c)
        position_ids[b, n_p + n_c:end] = torch.arange(n_p, n_p + n_r)
        position_ids[b, end:] = torch.arange(n_p + n_r, n_p + n_r + width - end)  # padding: anything finite
        segments[b, :n_p], segments[b, n_p:n_p + n_c], segments[b, n_p + n_c:end] = 0, 1, 2
        for side, start, n in (("chosen", n_p, n_c), ("rejected", n_p + n_c, n_r)):
            mask = f.get(f"{side}_mask") or [True] * n
            response_mask[b, start:start + n] = torch.tensor(mask, dtype=torch.bool)
        if n_p == 0 and n_r:  # without a prompt the first rejected token has no context, as the first chosen one
            response_mask[b, n_c] = False
    response_mask[:, 0] = False  # the first token has no context to be predicted from
    return {"input_ids": input_ids, "position_ids": position_ids, "segments": segments,
            "response_mask": response_mask, "attention_mask": (segments >= 0).long(),
            "row_ids": torch.tensor([f["row"] for f in features], dtype=torch.long)}


def shared_prompt_length(feature: dict) -> int:
    """Tokens of a preference feature laid out by `collate_shared_prompt`: prompt + chosen + rejected."""
    return len(feature["prompt_ids"]) + len(feature["chosen_ids"]) + len(feature["rejected_ids"])


def _first_fit(tree: list[int], size: int, need: int) -> int:
    """Leftmost bin whose free room is >= need (tree holds the max room of each subtree), or -1."""
    if tree[1] < need:
        return -1
    node = 1
    while node < size:
        node = 2 * node if tree[2 * node] >= need else 2 * node + 1
    return node - size


def _set_room(tree: list[int], size: int, index: int, room: int) -> None:
    node = index + size
    tree[node] = room
    while node > 1:
        node //= 2
        tree[node] = max(tree[2 * node], tree[2 * node + 1])


def pack(features: list[dict], max_length: int) -> list[list[int]]:
    """First-fit decreasing: bins of feature indices, each bin's total tokens <= max_length."""
    lengths = [feature_length(f) for f in features]
    for f, n in zip(features, lengths):
        if n > max_length:
            raise DataError(f"a feature of {n} tokens does not fit in a packed row of {max_length}",
                            row=f.get("row"))
    size = 1
    while size < max(len(features), 1):
        size *= 2
    tree = [-1] * (2 * size)  # max free room per subtree; -1 = no bin yet
    bins: list[list[int]] = []
    rooms: list[int] = []
    for i in sorted(range(len(features)), key=lambda i: (-lengths[i], i)):
        b = _first_fit(tree, size, lengths[i])
        if b < 0:
            b = len(bins)
            bins.append([])
            rooms.append(max_length)
        bins[b].append(i)
        rooms[b] -= lengths[i]
        _set_room(tree, size, b, rooms[b])
    return bins


def collate_packed(features: list[dict], bins: list[list[int]], pad_id: int) -> dict:
    """Packed rows: `input_ids`, `position_ids` (restart at 0 per sequence), `response_mask` (R,L);
    `seq_lens` and `packed_row_ids` (lists of lists); no `attention_mask`. The padding tail gets its own
    restarting positions, so it forms a separate block and attends to nothing real."""
    width = max(sum(len(features[i]["input_ids"]) for i in b) for b in bins)
    input_ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(bins), width), dtype=torch.long)
    response_mask = torch.zeros((len(bins), width), dtype=torch.bool)
    seq_lens, packed_row_ids = [], []
    for r, b in enumerate(bins):
        start = 0
        for i in b:
            ids = features[i]["input_ids"]
            end = start + len(ids)
            input_ids[r, start:end] = torch.tensor(ids, dtype=torch.long)
            position_ids[r, start:end] = torch.arange(len(ids))
            response_mask[r, start:end] = torch.tensor(features[i]["response_mask"], dtype=torch.bool)
            start = end
        position_ids[r, start:] = torch.arange(width - start)
        seq_lens.append([len(features[i]["input_ids"]) for i in b])
        packed_row_ids.append([features[i]["row"] for i in b])
    return {"input_ids": input_ids, "position_ids": position_ids, "response_mask": response_mask,
            "seq_lens": seq_lens, "packed_row_ids": packed_row_ids}


def packed_padding_fraction(batch: dict) -> float:
    """Share of a packed batch's tokens that are padding."""
    real = sum(sum(lens) for lens in batch["seq_lens"])
    return 1.0 - real / batch["input_ids"].numel()
