"""The reference engine: batched `transformers` `generate` with KV cache, stopping each sequence at EOS."""

from __future__ import annotations

import torch

from alignlab.rollout.base import Rollouts, Sampling


class HFEngine:
    """Generate with `model.generate`. Prompts are plain text (already rendered with any chat template)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def sync_weights(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, sampling: Sampling, *, seed: int | None = None) -> Rollouts:
        if seed is not None:
            torch.manual_seed(seed)
        expanded = [p for p in prompts for _ in range(n)]
        rows = []
        for start in range(0, len(expanded), self.batch_size):
            rows += self._generate_chunk(expanded[start:start + self.batch_size], sampling)
        return self._to_rollouts(expanded, rows, n)

    def _generate_chunk(self, prompts: list[str], sampling: Sampling) -> list[tuple[list[int], list[int], bool]]:
        tok, model = self.tokenizer, self.model
        prompt_ids = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
        width = max(len(p) for p in prompt_ids)
        pad = tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
        greedy = sampling.temperature == 0
        was_training = model.training
        model.eval()
        out = model.generate(
            input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
            max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
            temperature=None if greedy else sampling.temperature, top_p=None if greedy else sampling.top_p,
            top_k=None if greedy or sampling.top_k == 0 else sampling.top_k,
            pad_token_id=pad, eos_token_id=tok.eos_token_id,
        )
        model.train(was_training)
        rows = []
        for p, seq in zip(prompt_ids, out[:, width:].tolist()):
            completion, finished = [], False
            for t in seq:
                completion.append(t)
                if t == tok.eos_token_id:
                    finished = True
                    break
            rows.append((p, completion, finished))
        return rows

    def _to_rollouts(self, prompts: list[str], rows, n: int) -> Rollouts:
        pad = self.tokenizer.pad_token_id
        width = max(len(p) + len(c) for p, c, _ in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        resp = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (p, c, _) in enumerate(rows):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            attn[i, : len(p) + len(c)] = 1
            resp[i, len(p): len(p) + len(c)] = True
        texts = self.tokenizer.batch_decode([c for _, c, _ in rows], skip_special_tokens=True)
        return Rollouts(input_ids=ids, attention_mask=attn, response_mask=resp, prompts=list(prompts),
                        completions=texts, finished=torch.tensor([f for _, _, f in rows]), n=n)
