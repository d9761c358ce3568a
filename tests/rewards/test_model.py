"""RewardModelSource on tiny saved reward models: batching, whitening with the stored gain/bias, ensembles."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from alignlab.data import PromptCompletion, tokenize_sft
from alignlab.errors import ConfigError
from alignlab.models import load_tokenizer
from alignlab.models.reward import load_reward_model, normalize_scores, save_reward_model
from alignlab.rewards import RewardModelSource, build_reward, combine, disagreement
from alignlab.rewards.config import RewardSourceConfig

PROMPTS = ["the movie was", "what is 12+30?", "a truly", "i loved"]
COMPLETIONS = [" great", " the answer is 42", " awful plot with very bad dialogue", " the story but the ending"]


@pytest.fixture(scope="module")
def rm_dir(tiny_model_dir, tmp_path_factory):
    tok = load_tokenizer(tiny_model_dir)
    rm = load_reward_model(tiny_model_dir, seed=1)
    return save_reward_model(rm, tok, tmp_path_factory.mktemp("rm"), gain=[2.0], bias=[0.5])


@pytest.fixture(scope="module")
def ensemble_dir(tiny_model_dir, tmp_path_factory):
    tok = load_tokenizer(tiny_model_dir)
    rm = load_reward_model(tiny_model_dir, num_labels=3, ensemble=True, seed=2)
    return save_reward_model(rm, tok, tmp_path_factory.mktemp("rm_ens"), gain=[1.0, 2.0, 0.5], bias=[0.1, -0.2, 0.3])


def one_by_one(path) -> torch.Tensor:
    """Raw (B, K) scores from plain transformers, one unpadded sequence at a time, tokenized as in training."""
    tok = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    feats, _ = tokenize_sft([PromptCompletion(p, c) for p, c in zip(PROMPTS, COMPLETIONS)], tok, max_length=1024,
                            max_prompt_length=512)
    with torch.no_grad():
        return torch.cat([model(input_ids=torch.tensor([f["input_ids"]])).logits for f in feats])


def test_batched_scores_equal_unpadded_plain_transformers_and_are_whitened(rm_dir):
    raw = one_by_one(rm_dir)[:, 0]  # (B,)
    source = RewardModelSource(rm_dir, batch_size=3, device="cpu")  # 2 batches, padded
    scores = source.score(PROMPTS, COMPLETIONS)
    assert scores.shape == (4,) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    torch.testing.assert_close(scores, (raw - 0.5) * 2.0, atol=1e-5, rtol=1e-5)  # (s - bias) * gain
    torch.testing.assert_close(scores, normalize_scores(raw, source.model), atol=1e-5, rtol=1e-5)
    unwhitened = RewardModelSource(rm_dir, whiten=False, device="cpu").score(PROMPTS, COMPLETIONS)
    torch.testing.assert_close(unwhitened, raw, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unwhitened, scores)
    torch.testing.assert_close(source.disagreement(PROMPTS, COMPLETIONS), torch.zeros(4))


def test_ensemble_heads_are_whitened_then_combined(ensemble_dir):
    raw = one_by_one(ensemble_dir)  # (B, 3)
    whitened = (raw - torch.tensor([0.1, -0.2, 0.3])) * torch.tensor([1.0, 2.0, 0.5])
    source = RewardModelSource(ensemble_dir, mode="min", device="cpu")
    members = source.score_members(PROMPTS, COMPLETIONS)
    torch.testing.assert_close(members, whitened, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(source.score(PROMPTS, COMPLETIONS), whitened.min(1).values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(source.disagreement(PROMPTS, COMPLETIONS), disagreement(whitened), atol=1e-5,
                               rtol=1e-5)
    cfg = RewardSourceConfig(sources=[f"rm:{ensemble_dir}"], combine="mean_minus_std", lam=0.5, batch_size=2)
    from_spec = build_reward(cfg)
    assert isinstance(from_spec, RewardModelSource) and from_spec.mode == "mean_minus_std"
    torch.testing.assert_close(from_spec.score(PROMPTS, COMPLETIONS),
                               combine(whitened, mode="mean_minus_std", lam=0.5), atol=1e-5, rtol=1e-5)


def test_loaded_model_needs_its_tokenizer(rm_dir):
    model = load_reward_model(rm_dir)
    with pytest.raises(ConfigError, match="pass the tokenizer"):
        RewardModelSource(model)
    source = RewardModelSource(model, load_tokenizer(rm_dir), device="cpu")
    assert source.score(PROMPTS[:2], COMPLETIONS[:2]).shape == (2,)


def test_bad_options():
    with pytest.raises(ConfigError, match="ensemble mode"):
        RewardModelSource("unused", mode="max")
    with pytest.raises(ConfigError, match="name the reward model directory"):
        build_reward(RewardSourceConfig(sources=["rm:"]))
