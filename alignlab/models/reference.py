"""The reference policy of preference optimization: a frozen copy, the LoRA base, or precomputed log-probs.

    ref = LiveReference(frozen_copy(policy))                        # "copy": eval mode, no grad
    ref = LiveReference(policy, adapters_off=True)                  # "lora_base": `policy.disable_adapter()`
    table, hit = cached_reference_logprobs(policy, batches, n, key=cache_key(...), cache_dir=...)
    ref = PrecomputedReference(table)                               # "precomputed": looked up by feature index
    ref.seq_logprobs(batch)                                         # (rows,) for the batch's rows, no grad

Every batch handed to a reference holds `index (B,)`, the feature index of each of its B examples, and 2B
rows: the first side of every example, then the second side (chosen then rejected, or completion then the
mismatched KL completion for KTO), or B shared-prompt rows (`collate_shared_prompt`) read as those 2B rows.
A precomputed table is `(N, 2)`: column 0 the first side, column 1 the second, so a lookup is
`cat(table[index, 0], table[index, 1])`.

The precomputed table is cached on disk as `<cache_dir>/<key>.safetensors`, the key a hash of the reference
weights, the token features (which fix data, tokenizer output and max length), the tokenizer itself and
the compute precision; a second run with the same inputs loads it, any change computes a new one.

`sync_reference(reference, policy, alpha)` is the TR-DPO update ref <- alpha * policy + (1 - alpha) * ref
(Gorbatovski et al. 2024, arXiv:2404.09656, eq. 5; alpha = 1 is their hard update, eq. 6).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from alignlab.models.load import is_lora
from alignlab.models.logprobs import pair_logprobs

log = logging.getLogger("alignlab")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in eval mode with every parameter frozen (the "copy" reference)."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


class LiveReference:
    """Reference log-probs from a forward pass without grad, on the same batch the policy sees.

    Args:
        model: the frozen reference model, or (with `adapters_off`) the peft policy itself.
        adapters_off: run `model` inside `model.disable_adapter()`: the LoRA base is the reference.
        autocast: a factory of the precision context the policy runs in (e.g. `accelerator.autocast`).
    """

    mode = "live"

    def __init__(self, model: nn.Module, *, adapters_off: bool = False,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        if adapters_off and not hasattr(model, "disable_adapter"):
            raise ValueError("adapters_off=True needs a peft (LoRA) model")
        self.model, self.adapters_off, self.autocast = model, adapters_off, autocast

    def context(self) -> contextlib.AbstractContextManager:
        """The context in which `self.model` is the reference (adapters disabled for the LoRA base)."""
        return self.model.disable_adapter() if self.adapters_off else contextlib.nullcontext()

    @torch.no_grad()
    def seq_logprobs(self, batch: dict) -> Tensor:
        """(rows,) summed log-probs of the counted tokens of every row of `batch`."""
        was_training = self.model.training
        self.model.eval()  # no dropout in the reference, also when it is the policy's own base
        try:
            with self.context(), self.autocast():  # a shared-prompt batch gives its 2B rows, as a plain one
                return pair_logprobs(self.model, batch).seq_logprobs
        finally:
            self.model.train(was_training)


def policy_reference(policy: nn.Module, *, autocast: Callable[[], contextlib.AbstractContextManager]
                     = contextlib.nullcontext, device: torch.device | str | None = None) -> LiveReference:
    """The live reference of a policy about to be trained: its LoRA base (adapters off, no second copy) when it
    is a peft model, else a frozen copy (moved to `device` if given)."""
    if is_lora(policy):
        return LiveReference(policy, adapters_off=True, autocast=autocast)
    ref = frozen_copy(policy)
    return LiveReference(ref if device is None else ref.to(device), autocast=autocast)


class PrecomputedReference:
    """Reference log-probs looked up in a precomputed `(N, 2)` table by the batch's feature `index`."""

    mode = "precomputed"

    def __init__(self, table: Tensor):
        self.table = table

    def seq_logprobs(self, batch: dict) -> Tensor:
        index = batch["index"].to(self.table.device)
        return torch.cat([self.table[index, 0], self.table[index, 1]]).to(batch["index"].device)


@torch.no_grad()
def precompute_logprobs(reference: LiveReference, batches: Iterable[dict], n_features: int, *,
                        device: torch.device | str = "cpu", progress: bool = True) -> Tensor:
    """(N, 2) summed reference log-probs of both sides of every feature; rows not in `batches` are NaN."""
    from tqdm import tqdm

    batches = list(batches)
    table = torch.full((n_features, 2), float("nan"))
    for batch in tqdm(batches, desc="reference log-probs", unit="batch", disable=not progress, leave=False):
        index = batch["index"]
        seq = reference.seq_logprobs({k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)})
        table[index] = seq.float().cpu().view(2, -1).t()  # (2B,) -> (B, 2)
    return table


def default_cache_dir() -> Path:
    """`$ALIGNLAB_CACHE/ref_logprobs`, else `$XDG_CACHE_HOME/alignlab/ref_logprobs`, else ~/.cache/..."""
    if os.environ.get("ALIGNLAB_CACHE"):
        root = Path(os.environ["ALIGNLAB_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "alignlab"
    else:
        root = Path.home() / ".cache" / "alignlab"
    return root / "ref_logprobs"


def weights_hash(model: nn.Module) -> str:
    """Hash of every weight (and buffer) of `model`, LoRA adapters included."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tokenizer_hash(tokenizer) -> str:
    """Hash of a tokenizer's vocabulary, merges, special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([str(tokenizer.special_tokens_map), getattr(tokenizer, "chat_template", None)])
    return hashlib.blake2b((text + extra).encode(), digest_size=16).hexdigest()


def cache_key(model: nn.Module, features: list[dict], tokenizer, **settings) -> str:
    """The cache key of a precomputed table: reference weights + features + tokenizer + `settings`
    (max length, precision, ... anything else that changes the numbers)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(weights_hash(model).encode())
    h.update(tokenizer_hash(tokenizer).encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for f in features:
        h.update(json.dumps({k: v for k, v in sorted(f.items()) if k != "row"}, default=str).encode())
    return h.hexdigest()


def cached_reference_logprobs(compute: Callable[[], Tensor], *, key: str,
                              cache_dir: str | os.PathLike) -> tuple[Tensor, Path, bool]:
    """The table for `key` from `cache_dir`, or `compute()` it and store it atomically.

    Returns (table, cache file, whether it was loaded from the cache)."""
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        log.info("reference log-probs: reusing the cache %s", path)
        return load_file(path)["ref"], path, True
    table = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file({"ref": table.contiguous()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    log.info("reference log-probs: computed %d rows, cached in %s", table.shape[0], path)
    return table, path, False


@torch.no_grad()
def sync_reference(reference: nn.Module, policy: nn.Module, alpha: float) -> None:
    """TR-DPO: ref <- alpha * policy + (1 - alpha) * ref, parameter by parameter (alpha = 1: a hard copy)."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    ref_params, pol_params = dict(reference.named_parameters()), dict(policy.named_parameters())
    if ref_params.keys() != pol_params.keys():
        raise ValueError("reference and policy have different parameters; the reference must be a copy")
    for name, p_ref in ref_params.items():
        p_ref.lerp_(pol_params[name].to(p_ref.dtype), alpha)


def precomputed_reference(model: nn.Module, features: list[dict], collate_fn: Callable[[list[dict]], dict], *,
                          tokenizer, n_rows: int, batch_size: int, cache_dir: str | os.PathLike | None = None,
                          device: torch.device | str = "cpu", autocast=contextlib.nullcontext, progress: bool = True,
                          **settings) -> tuple[PrecomputedReference, Path]:
    """`model`'s log-probs of both sides of every feature, computed once in length-sorted batches (or loaded
    from the cache when weights, features, tokenizer and `settings` are unchanged).

    Args:
        features: with `index` (row of the table), as `collate_fn` turns them into 2B-row batches.
        n_rows: rows of the table (the indices of `features` are < n_rows; other rows stay NaN).
        settings: anything else that changes the numbers (max length, precision, ...), hashed into the key.
    Returns:
        (the reference, its cache file).
    """
    live = LiveReference(model, autocast=autocast)
    order = sorted(features, key=lambda f: sum(len(f.get(k, ())) for k in ("prompt_ids", "chosen_ids", "rejected_ids")))
    batches = [collate_fn(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
    key = cache_key(model, features, tokenizer, rows=n_rows, **settings)
    table, path, _ = cached_reference_logprobs(
        lambda: precompute_logprobs(live, batches, n_rows, device=device, progress=progress),
        key=key, cache_dir=cache_dir or default_cache_dir())
    return PrecomputedReference(table.to(device)), path


def save_reference_weights(model: nn.Module, folder: str | os.PathLike, step: int, keep: set[int]) -> str:
    """Write a (changing: TR-DPO, sDPO) reference's weights to `<folder>/step-<step>.safetensors` atomically and
    delete those of steps not in `keep`; returns the file name."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name, tmp = f"step-{step}.safetensors", folder / f".tmp-step-{step}.safetensors"
    save_model(model, str(tmp))  # handles tied weights, unlike save_file
    tmp.replace(folder / name)
    for old in folder.glob("step-*.safetensors"):
        if old.name != name and int(old.name[5:-12]) not in keep:
            old.unlink()
    return name
