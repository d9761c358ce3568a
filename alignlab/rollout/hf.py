"""The reference engine: batched `transformers` `generate` with KV cache, stopping each sequence at EOS.

Sampler log-probs come from `generate`'s raw (unprocessed) logits: log_softmax(logits / T) at each generated token.
With `dtype="bf16"`, `generate` runs on bfloat16 copies of the weights made per call (`rollout.precision`), and the
log-probs are the bfloat16 model's (logits upcast to float32 first).
"""

from __future__ import annotations

import torch

from alignlab.rollout.base import Rollouts, Sampling, assemble_rollouts, check_request
from alignlab.rollout.precision import rollout_dtype, rollout_weights


class HFEngine:
    """Generate with `model.generate`. Prompts are plain text (already rendered with any chat template)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 64, dtype: str = "auto"):
        rollout_dtype(dtype)  # validates the name
        self.model, self.tokenizer, self.batch_size, self.dtype = model, tokenizer, batch_size, dtype

    def sync_weights(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, sampling: Sampling, *, seed: int | None = None) -> Rollouts:
        check_request(prompts, n)
        if seed is not None:
            torch.manual_seed(seed)
        expanded = [p for p in prompts for _ in range(n)]
        rows = []
        for start in range(0, len(expanded), self.batch_size):
            rows += self._generate_chunk(expanded[start:start + self.batch_size], sampling)
        prompt_ids, completions, finished, logprobs = (list(x) for x in zip(*rows))
        return assemble_rollouts(self.tokenizer, expanded, prompt_ids, completions, finished, n, logprobs)

    def _generate_chunk(self, prompts: list[str], sampling: Sampling) -> list[tuple[list[int], list[int], bool,
                                                                                      list[float]]]:
        """(prompt ids, completion ids with EOS, stopped at EOS, sampler log-probs) per row."""
        tok, model = self.tokenizer, self.model
        prompt_ids = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
        width = max(len(p) for p in prompt_ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
        greedy = sampling.temperature == 0
        was_training = model.training
        model.eval()
        try:
            with rollout_weights(model, self.dtype):
                out = model.generate(
                    input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                    max_new_tokens=sampling.max_new_tokens, min_new_tokens=sampling.min_new_tokens or None,
                    do_sample=not greedy, temperature=None if greedy else sampling.temperature,
                    top_p=None if greedy else sampling.top_p,
                    top_k=None if greedy else sampling.top_k,  # 0 = off (explicit: a checkpoint may default to 50)
                    pad_token_id=pad, eos_token_id=tok.eos_token_id, output_logits=True, return_dict_in_generate=True,
                )
        finally:
            model.train(was_training)
        new = out.sequences[:, width:]  # (R, S)
        # sampler log-probs: log_softmax(raw logits / T) of each generated token (T = 1 when greedy)
        temperature = 1.0 if greedy else sampling.temperature
        logprobs = torch.stack([(step.float() / temperature).log_softmax(-1).gather(1, new[:, s, None]).squeeze(1)
                                for s, step in enumerate(out.logits)], dim=1)  # (R, S)
        rows = []
        for p, seq, lp in zip(prompt_ids, new.tolist(), logprobs.tolist()):
            completion, finished = [], False
            for t in seq:
                completion.append(t)
                if t == tok.eos_token_id:
                    finished = True
                    break
            rows.append((p, completion, finished, lp[:len(completion)]))
        return rows
