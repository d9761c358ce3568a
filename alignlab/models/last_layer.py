"""Run the last decoder layer's MLP only at the positions whose output is read.

A decoder's last layer feeds nothing but the final norm and the head, both position-wise: a position whose final
hidden state is never read (a reward model reads one token per sequence; log-probs read the positions before the
counted tokens, never the prompt's or the padding's) needs its keys and values in every layer, but not the last
layer's MLP, which is 2/3 of a Llama layer's matmul work (3·H·I of 4·H² + 3·H·I). Inside `last_mlp_at(model,
positions)` a forward pre-hook hands that MLP only the rows `positions` of its input, and a forward hook scatters
its output back, zeros elsewhere: the read positions get exactly the values of the full computation (the MLP is
position-wise), the others garbage that nothing reads. Backward skips the same work.

Safety: the layout (`<backbone>.layers[-1].mlp`) is looked up per model, and the first time a model class is seen
a small random input checks the restricted forward against the full one; a model that fails (an MLP that mixes
positions, another layer after the MLP) or has no such layout is run in full. Off under gradient checkpointing
(the recomputation in backward runs outside the context).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from alignlab.models.shared_prompt import inner_model

log = logging.getLogger("alignlab")
_VERIFIED: dict[type, bool] = {}  # model class -> the restricted last MLP gave the full result


def _last_mlp(model: nn.Module) -> nn.Module | None:
    inner = inner_model(model)
    backbone = getattr(inner, getattr(inner, "base_model_prefix", ""), inner)
    layers = getattr(backbone, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return None
    mlp = getattr(layers[-1], "mlp", None)
    return mlp if isinstance(mlp, nn.Module) else None


def _hooks(mlp: nn.Module, positions: Tensor) -> list:
    seen: dict = {}

    def gather(_module, args):  # (B, T, H) -> (1, N, H): the read positions only
        x = args[0]
        seen["shape"] = x.shape[:-1]
        return (x.reshape(-1, x.shape[-1]).index_select(0, positions)[None], *args[1:])

    def scatter(_module, _args, out):  # (1, N, H) -> (B, T, H), zeros at the positions never read
        first = out[0] if isinstance(out, tuple) else out
        shape = seen["shape"]
        flat = first.new_zeros(shape.numel(), first.shape[-1]).index_copy(0, positions, first[0])
        full = flat.view(*shape, first.shape[-1])
        return (full, *out[1:]) if isinstance(out, tuple) else full

    return [mlp.register_forward_pre_hook(gather), mlp.register_forward_hook(scatter)]


@contextlib.contextmanager
def last_mlp_at(model: nn.Module, positions: Tensor | None) -> Iterator[None]:
    """Within the context, forwards of `model` run its last layer's MLP only at `positions` (N,), flat indices
    b * T + t into the (B, T) input, sorted or not, without repeats. `None`, or a model without the layout or
    failing the check, runs in full."""
    mlp = None if positions is None or _checkpointing(inner_model(model)) else _last_mlp(model)
    if mlp is None or not _verify(model, mlp):
        yield
        return
    handles = _hooks(mlp, positions)
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _checkpointing(model: nn.Module) -> bool:
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers 5 renamed it
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def _verify(model: nn.Module, mlp: nn.Module) -> bool:
    """Once per model class: the final hidden states at 3 of 7 positions match with and without the restriction."""
    cls = type(inner_model(model))
    if cls not in _VERIFIED:
        _VERIFIED[cls] = _check(model, mlp)
        if not _VERIFIED[cls]:
            log.info("%s: the last layer's MLP is not position-wise here; running it at every position", cls.__name__)
    return _VERIFIED[cls]


def _check(model: nn.Module, mlp: nn.Module) -> bool:
    inner = inner_model(model)
    vocab = inner.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (1, 7), generator=torch.Generator().manual_seed(0)).to(
        inner.get_input_embeddings().weight.device)
    backbone: Callable = getattr(inner, getattr(inner, "base_model_prefix", ""), inner)
    positions = torch.tensor([1, 4, 6], device=ids.device)
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad(), torch.autocast(ids.device.type, enabled=False):
            full = backbone(input_ids=ids, use_cache=False)[0].reshape(7, -1)
            handles = _hooks(mlp, positions)
            try:
                part = backbone(input_ids=ids, use_cache=False)[0].reshape(7, -1)
            finally:
                for h in handles:
                    h.remove()
        tol = 1e-4 if full.dtype == torch.float32 else 2e-2  # a layer that mixes positions is off by O(1)
        return bool(torch.allclose(full[positions].float(), part[positions].float(), atol=tol, rtol=tol))
    except Exception:  # noqa: BLE001 - any failure means: do not restrict this model
        return False
    finally:
        inner.train(was_training)
