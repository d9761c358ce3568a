"""VLLMEngine: generation with vLLM on a GPU (optional: `pip install alignlab[vllm]`).

The engine runs vLLM's offline `LLM` in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0` unless set), built from
the policy's checkpoint directory (config and architecture; weights are then pushed from the live policy),
prompts passed as token ids (so the Rollouts layout and tokenization match the other engines), detokenized
by our tokenizer. `sync_weights(model)` copies the trainer's state dict into vLLM's model with the model's own
`load_weights` (LoRA adapters merged for the copy, then unmerged) and clears vLLM's prefix cache.

Sampler log-probs: vLLM is started with `logprobs_mode="processed_logprobs"`, i.e. log-probs after temperature
and after top-k/top-p filtering. They equal our contract, log_softmax(logits / T) of the unfiltered distribution,
only when top_k = 0, top_p = 1 and min_new_tokens = 0 (greedy: T = 1); otherwise `Rollouts.logprobs` is None
(recompute with `alignlab.models.compute_logprobs`).

Not tested in CI (no GPU, vLLM not installed): only the import guard is.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from alignlab.errors import ConfigError
from alignlab.rollout.base import Rollouts, Sampling, assemble_rollouts, check_request

logger = logging.getLogger("alignlab")
INSTALL_HINT = "the vllm rollout backend needs `pip install alignlab[vllm]` and a CUDA GPU"


def _import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ConfigError(f"vllm is not installed ({err}); {INSTALL_HINT}") from err
    return vllm


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return model


def _source_dir(model: nn.Module) -> str:
    """The local checkpoint directory vLLM builds the architecture from."""
    inner = _unwrap(model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    path = getattr(inner, "name_or_path", None) or getattr(inner.config, "_name_or_path", "")
    if not path or not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"VLLMEngine needs the policy's checkpoint directory (config.json) to build the vLLM "
                          f"model, got {path!r}; save the model with save_pretrained and load it from there")
    return path


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain transformers state dict of `model` (peft LoRA merged into a copy of the weights)."""
    model = _unwrap(model)
    if not hasattr(model, "merge_adapter"):
        return model.state_dict()
    model.merge_adapter()
    try:
        return {k.removeprefix("base_model.model.").replace(".base_layer", ""): v.detach().clone()
                for k, v in model.state_dict().items() if "lora_" not in k}
    finally:
        model.unmerge_adapter()


def _load_weights_rpc(worker, weights: dict) -> None:
    """Run inside a vLLM worker (collective_rpc): load `weights` into its model."""
    worker.model_runner.model.load_weights(weights=weights.items())


class VLLMEngine:
    """vLLM generation; implements `RolloutEngine`.

    Args:
        model: the policy (a transformers model loaded from a local directory), or that directory's path.
        tokenizer: the policy's tokenizer (prompts are tokenized here, completions decoded here).
        batch_size: unused (vLLM schedules its own batches); kept for `make_engine`'s signature.
        gpu_memory_utilization: share of GPU memory vLLM may take (weights + KV cache); leave room for training.
        **llm_kwargs: passed to `vllm.LLM` (e.g. dtype, max_model_len, enforce_eager).
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 64, gpu_memory_utilization: float = 0.3,
                 **llm_kwargs):
        vllm = _import_vllm()
        if not torch.cuda.is_available():
            raise ConfigError(f"no CUDA GPU is visible; {INSTALL_HINT}")
        if tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer has no eos_token_id: generation stops each sequence at EOS")
        path = str(model) if isinstance(model, str | os.PathLike) else _source_dir(model)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in-process: direct weight loads
        self.vllm, self.tokenizer, self.batch_size = vllm, tokenizer, batch_size
        self.llm = vllm.LLM(model=path, skip_tokenizer_init=True, gpu_memory_utilization=gpu_memory_utilization,
                            logprobs_mode="processed_logprobs", **llm_kwargs)
        if isinstance(model, nn.Module):
            self.sync_weights(model)

    def _vllm_model(self) -> nn.Module | None:
        """vLLM's model module when the engine core runs in this process (V1 in-process, or V0), else None."""
        executor = getattr(self.llm.llm_engine, "model_executor", None)
        worker = getattr(executor, "driver_worker", None)
        for owner in (getattr(worker, "worker", None), worker):
            runner = getattr(owner, "model_runner", None)
            if runner is not None and hasattr(runner, "model"):
                return runner.model
        return None

    @torch.no_grad()
    def sync_weights(self, model) -> None:
        state = _state_dict(model)
        target = self._vllm_model()
        if target is not None:
            target.load_weights(weights=state.items())
        else:  # engine core in another process: ship the weights to every worker
            self.llm.collective_rpc(_load_weights_rpc, args=({k: v.cpu() for k, v in state.items()},))
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights

    def _params(self, n: int, sampling: Sampling, seed: int | None):
        return self.vllm.SamplingParams(
            n=n, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1, max_tokens=sampling.max_new_tokens,
            min_tokens=sampling.min_new_tokens, stop_token_ids=[self.tokenizer.eos_token_id], logprobs=0,
            seed=seed, detokenize=False)

    def generate(self, prompts: list[str], n: int, sampling: Sampling, *, seed: int | None = None) -> Rollouts:
        check_request(prompts, n)
        prompt_ids = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        params = [self._params(n, sampling, None if seed is None else seed + i) for i in range(len(prompts))]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        exact = sampling.top_k == 0 and sampling.top_p == 1.0 and sampling.min_new_tokens == 0
        if not exact:
            logger.info("vllm: top-k/top-p/min_new_tokens are on, so vLLM's processed log-probs differ from the "
                        "sampler-logprobs contract; Rollouts.logprobs is None")
        rows_prompt, rows_ids, completions, finished, logprobs = [], [], [], [], []
        for text, ids, out in zip(prompts, prompt_ids, outputs):
            for sample in out.outputs:  # n per prompt, prompt-major
                tokens = list(sample.token_ids)
                rows_prompt.append(text)
                rows_ids.append(ids)
                completions.append(tokens)
                finished.append(sample.finish_reason == "stop")
                logprobs.append([step[t].logprob for step, t in zip(sample.logprobs or [], tokens)])
        return assemble_rollouts(self.tokenizer, rows_prompt, rows_ids, completions, finished, n,
                                 logprobs if exact else None)
