"""Load, adapt and save Hugging Face causal LMs: tokenizer, model, LoRA, merged safetensors checkpoints.

    tok = load_tokenizer("path/or/hub-name")
    model = model_from_config(cfg.model, tokenizer=tok)      # dtype, checkpointing, LoRA from ModelConfig
    with autocast_context(cfg.model.mixed_precision, "cpu"):
        out = compute_logprobs(model, batch)                  # alignlab.models.logprobs
    save_model(model, tok, "runs/x/final")                    # merged if LoRA; plain transformers loads it

Weights load from safetensors when the checkpoint has them; `trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from pathlib import Path

import torch

from alignlab.config import ModelConfig
from alignlab.errors import ConfigError

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# `org/name` or `name`: letters, digits, `-`, `_`, `.`; no leading `.`/`/`/`~`, no `..`.
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _resolve(path: str | Path, what: str) -> tuple[str, bool]:
    """Return `(path, is_local)`; neither an existing path nor a hub name -> ConfigError naming it."""
    text = str(path)
    if text.startswith("lab:"):
        raise ConfigError(f"{what} '{text}' is a lab name; resolve it first (alignlab.lab.resolve_names)")
    if Path(text).expanduser().exists():
        return str(Path(text).expanduser()), True
    if _HUB_NAME.match(text) and ".." not in text:
        return text, False
    raise ConfigError(f"{what} path '{text}' does not exist and is not a hub name (org/name)")


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False):
    """Load a tokenizer with right padding; without a pad token, reuse EOS (or add `<|pad|>`) and log it."""
    from transformers import AutoTokenizer

    name, _ = _resolve(path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ConfigError(f"could not load tokenizer '{name}': {e}") from None
    tok.padding_side = "right"
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
            logger.info("tokenizer %s has no pad token; padding with its EOS token %r", name, tok.eos_token)
        else:
            tok.add_special_tokens({"pad_token": "<|pad|>"})
            logger.warning("tokenizer %s has no pad or EOS token; added '<|pad|>' (the model's embeddings "
                           "must be resized: model_from_config(cfg, tokenizer=tok) does it)", name)
    return tok


def load_model(path: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False,
               gradient_checkpointing: bool = False, attn_implementation: str = "sdpa"):
    """Load a causal LM from a local directory or hub name.

    Args:
        path: model directory (`save_pretrained` output) or hub name.
        dtype: "float32" | "bfloat16" | "float16", the dtype of the weights as loaded.
        trust_remote_code: run model code shipped with the checkpoint.
        gradient_checkpointing: recompute layer activations in backward (non-reentrant); also sets
            `config.use_cache=False` (generation keeps its KV cache through `generation_config`).
        attn_implementation: "sdpa" (default; builds block-diagonal masks for packed rows), "eager", ...
    """
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ConfigError(f"model dtype must be one of {sorted(DTYPES)}, got '{dtype}'")
    name, local = _resolve(path, "model")
    use_safetensors = True if local and any(Path(name).glob("*.safetensors")) else None
    if local and use_safetensors is None:
        logger.warning("model %s has no .safetensors files; loading pickle-based weights", name)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation, use_safetensors=use_safetensors)
    except OSError as e:
        raise ConfigError(f"could not load model '{name}': {e}") from None
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def enable_gradient_checkpointing(model) -> None:
    """Turn on non-reentrant activation checkpointing and switch the forward's KV cache off."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def apply_lora(model, *, r: int, alpha: float, dropout: float = 0.0,
               target_modules: str | list[str] = "all-linear"):
    """Wrap `model` with LoRA adapters (peft); only the adapter weights stay trainable.

    Args:
        r: rank (> 0). alpha: scaling numerator (scale = alpha / r). dropout: on the LoRA input.
        target_modules: "all-linear" (every linear layer except the LM head), a comma-separated string of
            module names, or a list of them.
    """
    from peft import LoraConfig, get_peft_model

    if r <= 0:
        raise ConfigError(f"LoRA rank must be > 0, got {r}")
    if isinstance(target_modules, str) and target_modules != "all-linear":
        target_modules = [m.strip() for m in target_modules.split(",") if m.strip()]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def is_lora(model) -> bool:
    """True when `model` is a peft-wrapped model."""
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def merge_lora(model):
    """Fold LoRA adapters into the base weights and return the plain transformers model (in place).

    A model without adapters is returned unchanged.
    """
    return model.merge_and_unload() if is_lora(model) else model


def save_model(model, tokenizer, path: str | Path) -> Path:
    """Write safetensors weights, config and tokenizer to `path`, loadable by plain `transformers`.

    A LoRA model is merged in a copy, so the model being trained keeps its adapters.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    plain = merge_lora(copy.deepcopy(model)) if is_lora(model) else model
    use_cache = plain.config.use_cache
    plain.config.use_cache = True  # checkpointing turned it off for training; a saved model generates
    try:
        plain.save_pretrained(path)
    finally:
        plain.config.use_cache = use_cache
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def model_from_config(cfg: ModelConfig, *, tokenizer=None, attn_implementation: str = "sdpa"):
    """Load the model a ModelConfig describes: dtype, remote code, checkpointing, then LoRA when lora_r > 0.

    `mixed_precision` is not applied here: wrap forwards in `autocast_context(cfg.mixed_precision, device)`.
    If `tokenizer` has more tokens than the model's embeddings (a pad token was added), they are resized.
    """
    model = load_model(cfg.path, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                       gradient_checkpointing=cfg.gradient_checkpointing,
                       attn_implementation=attn_implementation)
    if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
        logger.info("resized the model's token embeddings to %d for the tokenizer", len(tokenizer))
    if cfg.lora_r > 0:
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           target_modules=cfg.lora_target_modules)
    return model


def autocast_context(mixed_precision: str, device: str | torch.device):
    """`torch.autocast` for "bf16"/"fp16" on `device`'s type, or a no-op context for "no"."""
    device_type = torch.device(device).type
    if mixed_precision == "no":
        return contextlib.nullcontext()
    if mixed_precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if mixed_precision == "fp16":
        if device_type == "cpu":
            raise ConfigError("model.mixed_precision=fp16 needs a GPU; use bf16 on CPU")
        return torch.autocast(device_type, dtype=torch.float16)
    raise ConfigError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got '{mixed_precision}'")
