"""Generation engines behind one protocol: `generate(prompts, n, sampling) -> Rollouts`."""

import logging

from alignlab.errors import ConfigError
from alignlab.rollout.base import RolloutEngine, Rollouts, Sampling
from alignlab.rollout.hf import HFEngine
from alignlab.rollout.native import NativeEngine, native_unsupported_reason
from alignlab.rollout.precision import DTYPES, rollout_weights

BACKENDS = ("auto", "native", "hf", "vllm")

logger = logging.getLogger("alignlab")


def make_engine(model, tokenizer, *, backend: str = "auto", batch_size: int = 64,
                dtype: str = "auto") -> RolloutEngine:
    """The generation engine for `model`.

    backend: `auto` = `native` (alignlab's batched decode loop, `NativeEngine`) when the model supports it, else
    `hf` with the reason logged; `native` (error if unsupported); `hf` (transformers `generate`, the reference);
    `vllm` (`VLLMEngine`, needs `pip install alignlab[vllm]` and a GPU).
    dtype: rollout precision, `auto` (the model's dtype) or `bf16` (sample from bfloat16 copies of the weights made
    per `generate` call; vLLM: its `dtype="bfloat16"`); see `rollout.precision`.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"unknown rollout dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if backend == "auto":
        reason = native_unsupported_reason(model)
        if reason is None:
            return NativeEngine(model, tokenizer, batch_size=batch_size, dtype=dtype)
        logger.info("rollout backend auto: using transformers generate (hf) because NativeEngine cannot run "
                    "%s: %s", type(model).__name__, reason)
        return HFEngine(model, tokenizer, batch_size=batch_size, dtype=dtype)
    if backend == "native":
        return NativeEngine(model, tokenizer, batch_size=batch_size, dtype=dtype)
    if backend == "hf":
        return HFEngine(model, tokenizer, batch_size=batch_size, dtype=dtype)
    if backend == "vllm":
        from alignlab.rollout.vllm import VLLMEngine

        return VLLMEngine(model, tokenizer, batch_size=batch_size, **({"dtype": "bfloat16"} if dtype == "bf16" else {}))
    raise ConfigError(f"unknown rollout backend {backend!r}; expected one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "DTYPES", "HFEngine", "NativeEngine", "RolloutEngine", "Rollouts", "Sampling", "make_engine",
           "native_unsupported_reason", "rollout_weights"]
