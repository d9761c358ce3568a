"""Pieces of the PPO recipe (recipes/ppo.py) that are not its loop: the critic, running score moments, and the
batches of InstructGPT's pretraining mix (PPO-ptx)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from alignlab.data import collate, make_batches, normalize, read_rows, tokenize_sft
from alignlab.errors import ConfigError, DataError
from alignlab.models import load_tokenizer
from alignlab.models.value import ValueHead, load_value_model


class RunningMoments:
    """Running mean/std of all scores seen so far (Chan et al. parallel update), for `score_norm: running`."""

    def __init__(self, state: dict | None = None):
        self.count, self.mean, self.m2 = (state["count"], state["mean"], state["m2"]) if state else (0, 0.0, 0.0)

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        """Fold `scores` (B,) into the moments, then whiten them with the updated moments."""
        n, mean, var = scores.numel(), float(scores.mean()), float(scores.var(unbiased=False))
        total, delta = self.count + n, mean - self.mean
        self.m2 += var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total
        std = math.sqrt(self.m2 / max(self.count - 1, 1))
        return (scores - self.mean) / max(std, 1e-8)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}


def build_critic(cfg, policy, tokenizer):
    """(critic model or None, value head or None) as `cfg.ppo.critic` says."""
    if cfg.ppo.critic == "head":
        return None, ValueHead.for_policy(policy)
    path = cfg.ppo.critic_path or cfg.model.path
    critic_tok = Path(path) / "tokenizer_config.json"
    if critic_tok.is_file() and load_tokenizer(path).get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"the critic '{path}' has another tokenizer than the policy '{cfg.model.path}': "
                          "the critic reads the policy's tokens, so both must share one vocabulary")
    critic = load_value_model(path, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code,
                              tokenizer=tokenizer, seed=cfg.seed,
                              gradient_checkpointing=cfg.model.gradient_checkpointing)
    return critic, None


class PtxBatches:
    """The pretraining mix of PPO-ptx (Ouyang et al. 2022, Eq. 2): batches of an SFT-style dataset (prompt /
    completion or conversational rows; the completion tokens count), one per policy update.

    Batches are length-grouped in a seeded order per epoch and cycle over epochs; with several processes each
    takes every `world`-th batch. `state_dict()` (epoch, position) goes into checkpoints and `load_state_dict`
    restores it, so a resumed run draws the batches the uninterrupted run would have. Bad rows are a DataError
    naming file, row and field.
    """

    def __init__(self, dataset: str, tokenizer, *, batch_size: int, max_length: int, seed: int, rank: int = 0,
                 world: int = 1):
        examples = normalize(read_rows(dataset), "sft")
        self.features, _ = tokenize_sft(examples, tokenizer, max_length=max_length)
        self.pad_id, self.batch_size, self.seed = tokenizer.pad_token_id, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch, self.position = 0, 0
        self._order = self._batches(self.epoch)
        if not self._order:
            raise DataError(f"ppo.ptx_dataset has {len(self.features)} usable rows: too few for one batch of "
                            f"{batch_size} per process ({world}); lower ppo.ptx_batch_size", source=dataset)

    def _batches(self, epoch: int) -> list[list[int]]:
        lengths = [len(f["input_ids"]) for f in self.features]
        order = make_batches(lengths, batch_size=self.batch_size, seed=self.seed, epoch=epoch)
        return order[self.rank::self.world][: len(order) // self.world]  # the same count on every process

    def next(self) -> dict:
        """This process's next collated batch (input_ids, attention_mask, response_mask, row_ids)."""
        if self.position >= len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._batches(self.epoch)
        idx = self._order[self.position]
        self.position += 1
        return collate([self.features[i] for i in idx], self.pad_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._batches(self.epoch)
