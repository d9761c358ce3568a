"""A trained reward model as a reward source (spec `rm:PATH`).

    source = RewardModelSource("runs/rm/final")                 # whitened with the gain/bias `alignlab rm` saved
    scores = source.score(prompts, completions)                  # (B,) float32 CPU
    members = source.score_members(prompts, completions)         # (B, N) per head (ensemble) or per attribute
    spread = source.disagreement(prompts, completions)           # (B,) std over an ensemble's heads

Text becomes model input exactly as in `alignlab rm` training and `alignlab eval rm`: `tokenize_sft` of
(prompt, completion) (BOS + prompt tokens + completion tokens + EOS, or the chat template for message
lists), the same truncation, then right-padded batches grouped by length; the score is read at the last
non-pad token. Whitening (Touvron et al. 2023, Llama 2 §3.2.2; Ziegler et al. 2019) is
`normalize_scores`: (s - bias) * gain with the constants stored in the model's config; a model without
them is left raw. An ensemble model (`config.alignlab_ensemble = N` heads) has each head whitened, then
combined with `alignlab.rewards.ensemble.combine` (mean / min / mean_minus_std). A multi-attribute model
(K outputs, not an ensemble) returns (B, K).
"""

from __future__ import annotations

from pathlib import Path

import torch

from alignlab.data import PromptCompletion, collate, make_batches, tokenize_sft
from alignlab.errors import ConfigError
from alignlab.models import load_tokenizer
from alignlab.models.reward import ensemble_size, load_reward_model, normalize_scores, reward_scores
from alignlab.rewards.ensemble import MODES, combine, disagreement


class RewardModelSource:
    """Scores (prompt, completion) pairs with a sequence-classification reward model, in batches, no grad.

    Args:
        model_or_path: a saved reward model directory (`alignlab rm` output or any transformers
            `*ForSequenceClassification`), or a loaded model (then give `tokenizer`).
        tokenizer: default: the one saved with the model.
        whiten: apply the stored normalization (`normalize_scores`); False gives raw head logits.
        batch_size: sequences per forward pass.
        device: where the model runs (default: CUDA if available, else CPU); scores come back on CPU.
        mode, lam: how an ensemble's heads are combined (`ensemble.combine`); ignored for one head.
        max_length, max_prompt_length: truncation, as in `alignlab rm --data.max-length`.
        dtype: weights' dtype when loading from a path ("float32" | "bfloat16" | "float16").
    """

    def __init__(self, model_or_path, tokenizer=None, *, whiten: bool = True, batch_size: int = 32, device=None,
                 mode: str = "mean", lam: float = 1.0, max_length: int = 1024, max_prompt_length: int | None = None,
                 dtype: str = "float32"):
        if mode not in MODES:
            raise ConfigError(f"reward model ensemble mode must be one of {MODES}, got {mode!r}")
        if batch_size < 1 or lam < 0:
            raise ConfigError(f"reward model source: batch_size must be >= 1 and lam >= 0 (got {batch_size}, {lam})")
        if max_prompt_length is not None and max_prompt_length >= max_length:
            raise ConfigError(f"max_prompt_length ({max_prompt_length}) must be < max_length ({max_length})")
        if isinstance(model_or_path, str | Path):
            self.name = f"rm:{model_or_path}"
            tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_or_path)
            model = load_reward_model(model_or_path, tokenizer=tokenizer, dtype=dtype)
        elif tokenizer is None:
            raise ConfigError("RewardModelSource: pass the tokenizer with a loaded model")
        else:
            self.name, model = f"rm:{type(model_or_path).__name__}", model_or_path
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer, self.whiten, self.batch_size = tokenizer, whiten, batch_size
        self.mode, self.lam = mode, lam
        # keep the prompt to at most half of max_length so that every completion keeps tokens
        self.max_length, self.max_prompt_length = max_length, max_prompt_length or max_length // 2
        self.ensemble = ensemble_size(self.model) is not None

    def _features(self, prompts: list, completions: list) -> list[dict]:
        examples = [PromptCompletion(p, c, self.name, i) for i, (p, c) in enumerate(zip(prompts, completions))]
        feats, _ = tokenize_sft(examples, self.tokenizer, max_length=self.max_length,
                                max_prompt_length=self.max_prompt_length)
        if len(feats) != len(examples):  # only an empty prompt and an empty completion leave no counted token
            lost = sorted(set(range(len(examples))) - {f["row"] for f in feats})
            raise ValueError(f"{self.name}: completions {lost[:5]} have no token to score (empty prompt and "
                             "completion)")
        return feats

    @torch.no_grad()
    def score_members(self, prompts: list, completions: list, **columns) -> torch.Tensor:
        """(B, K) float32 CPU scores, whitened per output when `whiten` (K heads or attributes)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{self.name}: {len(prompts)} prompts but {len(completions)} completions")
        feats = self._features(prompts, completions)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = torch.zeros(len(feats), self.model.config.num_labels)
        for idx in make_batches([len(f["input_ids"]) for f in feats], batch_size=self.batch_size, seed=0, epoch=0):
            batch = {k: v.to(self.device) for k, v in collate([feats[i] for i in idx], pad_id).items()}
            scores = reward_scores(self.model, batch)  # (b, K)
            out[idx] = (normalize_scores(scores, self.model) if self.whiten else scores).float().cpu()
        return out

    def disagreement(self, prompts: list, completions: list, **columns) -> torch.Tensor:
        """(B,) std over the ensemble's heads (zeros for a single-head model)."""
        members = self.score_members(prompts, completions)
        return disagreement(members) if self.ensemble else torch.zeros(len(completions))

    def score(self, prompts: list, completions: list, **columns) -> torch.Tensor:
        """(B,) scores: the single head, or the ensemble's heads combined; (B, K) for K attributes."""
        members = self.score_members(prompts, completions)
        if self.ensemble:
            return combine(members, mode=self.mode, lam=self.lam)
        return members[:, 0] if members.shape[1] == 1 else members
