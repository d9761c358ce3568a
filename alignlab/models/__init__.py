"""alignlab.models: load/adapt/save causal LMs, and the one place logits become log-probs."""

from alignlab.models.load import (
    apply_lora,
    autocast_context,
    enable_gradient_checkpointing,
    is_lora,
    load_model,
    load_tokenizer,
    merge_lora,
    model_from_config,
    save_model,
)
from alignlab.models.logprobs import (
    LogProbs,
    compute_logprobs,
    naive_entropy,
    naive_logprobs,
    packed_seq_logprobs,
)

__all__ = [
    "LogProbs",
    "apply_lora",
    "autocast_context",
    "compute_logprobs",
    "enable_gradient_checkpointing",
    "is_lora",
    "load_model",
    "load_tokenizer",
    "merge_lora",
    "model_from_config",
    "naive_entropy",
    "naive_logprobs",
    "packed_seq_logprobs",
    "save_model",
]
