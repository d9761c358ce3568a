"""The PPO critic: value model from a reward model / the policy, value head on the policy, save/load."""

from __future__ import annotations

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.models import compute_logprobs, load_model
from alignlab.models.reward import load_reward_model, normalize_scores, reward_scores, save_reward_model
from alignlab.models.value import ValueHead, capture_hidden, load_value_model, save_value_model, token_values


def _batch(tok, texts=("the movie was great", "a truly awful plot with very bad dialogue")):
    enc = [tok(t)["input_ids"] for t in texts]
    width = max(len(e) for e in enc)
    ids = torch.full((len(enc), width), tok.pad_token_id)
    attn = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, :len(e)], attn[i, :len(e)] = torch.tensor(e), 1
    response = attn.bool().clone()
    response[:, :2] = False  # the first two tokens are the "prompt"
    return {"input_ids": ids, "attention_mask": attn, "response_mask": response}


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    rm = load_reward_model(tiny_model_dir, seed=3)
    with torch.no_grad():
        rm.score.weight.normal_()  # a head far from any fresh initialization
    path = tmp_path_factory.mktemp("rm")
    save_reward_model(rm, tiny_tokenizer, path, gain=[2.0], bias=[0.5])
    return path


def test_critic_from_reward_model_keeps_head_and_folds_whitening(rm_dir, tiny_tokenizer):
    rm = load_reward_model(rm_dir)
    critic = load_value_model(rm_dir)
    assert torch.allclose(critic.score.weight, 2.0 * rm.score.weight)  # gain folded in
    assert torch.allclose(critic.score.bias, torch.tensor([-1.0]))  # -bias * gain
    for name, p in rm.model.named_parameters():
        assert torch.equal(p, critic.model.get_parameter(name)), name
    batch = _batch(tiny_tokenizer)
    with torch.no_grad():
        whitened = normalize_scores(reward_scores(rm, batch), rm)[:, 0]  # read at each row's last token
        per_position = critic(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., 0]
    last = batch["attention_mask"].sum(1) - 1
    assert torch.allclose(per_position[torch.arange(2), last], whitened, atol=1e-5)
    assert not hasattr(critic.config, "alignlab_reward_gain")  # no second whitening downstream


def test_values_shape_shift_and_mask(rm_dir, tiny_tokenizer):
    critic = load_value_model(rm_dir)
    batch = _batch(tiny_tokenizer)
    with torch.no_grad():
        values = token_values(critic, batch)
        raw = critic(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., 0]
    assert values.shape == batch["input_ids"].shape and values.dtype == torch.float32
    assert (values[~batch["response_mask"]] == 0).all()
    mask = batch["response_mask"]
    assert torch.equal(values[:, 1:][mask[:, 1:]], raw[:, :-1][mask[:, 1:]])  # value of token t read at t - 1
    values.sum()  # differentiable path exists under grad
    assert token_values(critic, batch).requires_grad


def test_critic_from_policy_starts_at_zero_and_round_trips(tiny_model_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForTokenClassification

    critic = load_value_model(tiny_model_dir)
    policy = load_model(tiny_model_dir)
    assert torch.equal(critic.model.embed_tokens.weight, policy.model.embed_tokens.weight)
    batch = _batch(tiny_tokenizer)
    assert (token_values(critic, batch) == 0).all()
    with torch.no_grad():
        critic.score.weight.normal_()
        critic.score.bias.fill_(0.25)
    save_value_model(critic, tiny_tokenizer, tmp_path / "critic")
    again = load_value_model(tmp_path / "critic")
    plain = AutoModelForTokenClassification.from_pretrained(tmp_path / "critic").eval()
    with torch.no_grad():
        expected = token_values(critic.eval(), batch)
        assert torch.allclose(token_values(again, batch), expected, atol=1e-6)
        assert torch.allclose(token_values(plain, batch), expected, atol=1e-6)
    assert expected.abs().sum() > 0


def test_critic_needs_one_output(tiny_model_dir, tiny_tokenizer, tmp_path):
    save_reward_model(load_reward_model(tiny_model_dir, num_labels=2), tiny_tokenizer, tmp_path / "rm2")
    with pytest.raises(ConfigError, match="one output"):
        load_value_model(tmp_path / "rm2")
    with pytest.raises(ConfigError, match="critic path .* does not exist"):
        load_value_model(tmp_path / "missing" / "rm")


def test_value_head_shares_the_policy_forward(tiny_model_dir, tiny_tokenizer, tmp_path):
    policy = load_model(tiny_model_dir)
    head = ValueHead.for_policy(policy)
    assert head.hidden_size == 32 and (head.score.weight == 0).all()
    with torch.no_grad():
        head.score.weight.normal_()
    batch = _batch(tiny_tokenizer)
    with capture_hidden(policy) as hidden:
        lp = compute_logprobs(policy, batch)
    assert len(hidden) == 1 and hidden[0].shape == (*batch["input_ids"].shape, 32)
    values = head.token_values(hidden[0], batch["response_mask"])
    full = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    expected = head(full.hidden_states[-1])  # (B, T) per position
    mask = batch["response_mask"]
    assert torch.allclose(values[:, 1:][mask[:, 1:]], expected[:, :-1][mask[:, 1:]], atol=1e-5)
    assert (values[~mask] == 0).all()
    # one backward reaches the backbone through both the log-probs and the values
    (values.sum() - lp.seq_logprobs.sum()).backward()
    assert head.score.weight.grad is not None and policy.model.layers[0].mlp.up_proj.weight.grad is not None
    head.save_pretrained(tmp_path / "head")
    again = ValueHead.from_pretrained(tmp_path / "head")
    assert torch.equal(again.score.weight, head.score.weight)
    with pytest.raises(ConfigError, match="value head"):
        ValueHead.from_pretrained(tmp_path)


def test_disable_dropout_makes_train_mode_forwards_repeatable(tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignlab.models.value import disable_dropout

    cfg = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.5, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).train()
    model.extra = torch.nn.Dropout(0.3)
    batch = _batch(tiny_tokenizer)
    noisy = [compute_logprobs(model, batch).logprobs for _ in range(2)]
    assert not torch.equal(*noisy)  # attention dropout is live in train mode
    disable_dropout(model)
    assert model.training and model.extra.p == 0.0 and model.model.layers[0].self_attn.attention_dropout == 0.0
    again = [compute_logprobs(model, batch).logprobs for _ in range(2)]
    assert torch.equal(*again)
