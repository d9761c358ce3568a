"""The shared online-RL experience step: prompts with their columns, deterministic prompt order, collect
(sampling, scoring, old/reference log-probs at the sampling temperature), minibatches, concat, samples."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.config import DataConfig, RolloutConfig
from alignlab.models import load_model, naive_logprobs
from alignlab.models.reference import LiveReference, frozen_copy
from alignlab.rewards import FunctionReward
from alignlab.rollout import make_engine
from alignlab.rollout.experience import (
    PromptSampler,
    collect,
    concat,
    load_prompts,
    minibatches,
    rollout_metrics,
    sampling_of,
    write_samples,
)
from alignlab.runtime import RunDir


@pytest.fixture(scope="module")
def gsm8k_file(tmp_path_factory):
    """GSM8K-style rows (question/answer with a `#### final` line) plus an extra column."""
    path = tmp_path_factory.mktemp("prompts") / "gsm8k.jsonl"
    rows = [{"question": f"what is {i}+{i}?", "answer": f"{i} plus {i} is {2 * i}\n#### {2 * i}", "id": i}
            for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    torch.manual_seed(0)
    return load_model(tiny_model_dir)


def answer_reward(prompts, completions, answer):
    """The prompt's own answer as the score: checks that columns are expanded per sample."""
    return [float(a) for a in answer]


def test_load_prompts_keeps_columns_and_truncates(gsm8k_file, tiny_tokenizer):
    prompts = load_prompts(DataConfig(dataset=str(gsm8k_file)), tiny_tokenizer, max_prompt_length=64)
    assert len(prompts) == 6 and prompts.texts[3] == "what is 3+3?"
    assert prompts.columns["answer"] == [str(2 * i) for i in range(6)]  # the GSM8K final answer
    assert prompts.columns["id"] == list(range(6)) and prompts.columns["solution"][1].startswith("1 plus 1")
    assert prompts.rows == list(range(1, 7))
    short = load_prompts(DataConfig(dataset=str(gsm8k_file)), tiny_tokenizer, max_prompt_length=4)
    assert all(len(ids) == 4 for ids in short.prompt_ids)
    assert short.texts[3] != prompts.texts[3] and prompts.texts[3].endswith(short.texts[3].strip())


def test_conversational_prompts_are_rendered_with_the_generation_prompt(tmp_path, tiny_tokenizer):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "what is 2+2?"}], "answer": "4"}) + "\n")
    prompts = load_prompts(DataConfig(dataset=str(path)), tiny_tokenizer, max_prompt_length=64)
    expected = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "what is 2+2?"}], tokenize=False,
                                                  add_generation_prompt=True)
    assert prompts.texts == [expected] and "what is 2+2?" in expected and prompts.columns == {"answer": ["4"]}


def test_prompt_sampler_is_deterministic_resumable_and_covers_each_epoch():
    a = PromptSampler(10, seed=3)
    first = a.next(4) + a.next(4)
    wrap = a.next(4)  # 2 from epoch 0, 2 from epoch 1
    assert sorted(first + wrap[:2]) == list(range(10)) and a.state_dict() == {"epoch": 1, "position": 2}
    b = PromptSampler(10, seed=3, state={"epoch": 1, "position": 2})
    assert a.next(5) == b.next(5)  # resumed: the same prompts as the uninterrupted sampler
    assert PromptSampler(10, seed=4).next(10) != PromptSampler(10, seed=3).next(10)
    whole = PromptSampler(10, seed=1).next(6)
    assert [PromptSampler(10, seed=1).next(3, rank=r, world=2) for r in (0, 1)] == [whole[:3], whole[3:]]


def test_collect_scores_and_logprobs_at_sampling_temperature(gsm8k_file, tiny_tokenizer, policy):
    prompts = load_prompts(DataConfig(dataset=str(gsm8k_file)), tiny_tokenizer, max_prompt_length=64)
    engine = make_engine(policy, tiny_tokenizer, backend="hf")
    sampling = sampling_of(RolloutConfig(max_new_tokens=6, temperature=1.7))
    ref = LiveReference(frozen_copy(policy))
    exp = collect(engine, FunctionReward(answer_reward), prompts, [4, 1], sampling, group_size=3, seed=0,
                  policy=policy, reference=ref)
    assert len(exp) == 6 and exp.prompt_index == [4, 4, 4, 1, 1, 1]
    assert exp.scores.tolist() == [8.0] * 3 + [2.0] * 3  # columns follow the rows
    assert exp.rollouts.prompts[0] == "what is 4+4?" and exp.columns["id"] == [4, 4, 4, 1, 1, 1]
    batch = exp.rollouts.batch()
    with torch.no_grad():
        logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = naive_logprobs(logits / 1.7, batch["input_ids"], batch["response_mask"])
    torch.testing.assert_close(exp.old_logprobs, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(exp.ref_logprobs, exp.old_logprobs)  # the copy equals the policy at start
    assert (exp.old_logprobs[~exp.response_mask] == 0).all() and (exp.old_logprobs[exp.response_mask] < 0).all()
    again = collect(engine, FunctionReward(answer_reward), prompts, [4, 1], sampling, group_size=3, seed=0)
    assert again.old_logprobs is None and again.ref_logprobs is None  # on-policy: both forwards skipped
    assert again.rollouts.completions == exp.rollouts.completions  # the seed fixes the samples
    metrics = rollout_metrics(exp)
    assert metrics["score"].item() == 5.0 and metrics["score_std"].item() == 3.0


def test_minibatches_concat_select_and_samples(gsm8k_file, tiny_tokenizer, policy, tmp_path):
    prompts = load_prompts(DataConfig(dataset=str(gsm8k_file)), tiny_tokenizer, max_prompt_length=64)
    engine = make_engine(policy, tiny_tokenizer, backend="hf")
    reward = FunctionReward(answer_reward)
    parts = [collect(engine, reward, prompts, idx, sampling_of(RolloutConfig(max_new_tokens=n)), group_size=2,
                     seed=n, policy=policy) for idx, n in (([0, 2], 3), ([5], 8))]
    exp = concat(parts, tiny_tokenizer.pad_token_id)
    assert len(exp) == 6 and exp.scores.tolist() == [0, 0, 4, 4, 10, 10]
    assert exp.rollouts.input_ids.shape[1] == max(p.rollouts.input_ids.shape[1] for p in parts)
    narrow = parts[0].rollouts.input_ids.shape[1]
    assert (exp.rollouts.input_ids[:4, narrow:] == tiny_tokenizer.pad_token_id).all()
    torch.testing.assert_close(exp.select([4, 5]).old_logprobs[:, :parts[1].old_logprobs.shape[1]],
                               parts[1].old_logprobs)
    exp.tensors["advantages"] = torch.arange(6.0)
    gen = torch.Generator().manual_seed(0)
    mbs = minibatches(exp, 4, generator=gen)
    assert len(mbs) == 4 and sorted(torch.cat([m["advantages"] for m in mbs]).tolist()) == list(range(6))
    for mb in mbs:  # trimmed to the minibatch's own longest row; rows stay aligned
        assert mb["input_ids"].shape[1] == mb["attention_mask"].sum(-1).max() == mb["old_logprobs"].shape[1]
        assert mb["scores"].tolist() == [exp.scores[int(a)].item() for a in mb["advantages"]]
    with pytest.raises(ValueError, match="minibatches"):
        minibatches(exp, 7)
    run = RunDir(tmp_path / "run", tensorboard=False)
    path = write_samples(run, 3, exp, extra={"advantage": exp.tensors["advantages"]})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    run.close()
    assert path.name == "step-3.jsonl" and len(rows) == 6 and rows[5]["advantage"] == 5.0
    assert rows[4]["prompt"] == "what is 5+5?" and rows[4]["answer"] == "10" and rows[4]["finish_reason"] in (
        "stop", "length")
