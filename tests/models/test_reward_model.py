"""Reward models on the saved tiny Llama fixture (`tiny_model_dir`): scoring, save/load with plain
transformers, whitening, the ArmoRM gate, the process reward model, LoRA."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from alignlab.data.batching import collate_preference
from alignlab.errors import ConfigError
from alignlab.losses.reward import bradley_terry_loss, gated_bt_loss, process_reward_loss
from alignlab.models import load_tokenizer
from alignlab.models.reward import (
    GatingNetwork,
    apply_reward_lora,
    compute_normalization,
    ensemble_size,
    load_gating,
    load_process_reward_model,
    load_reward_model,
    normalize_scores,
    prompt_hidden_states,
    reward_scores,
    save_reward_model,
    step_scores,
    step_separator_mask,
)

TEXTS = ["the movie was great", "what is 12+30? the answer is 42", "a truly awful plot",
         "an excellent, moving and very funny film", "the film was terrible", "i loved the story"]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def encode(tok, texts, extra_pad: int = 0) -> dict:
    enc = tok(list(texts), return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if extra_pad:
        ids = torch.cat([ids, torch.full((ids.shape[0], extra_pad), tok.pad_token_id)], 1)
        mask = torch.cat([mask, torch.zeros(mask.shape[0], extra_pad, dtype=mask.dtype)], 1)
    return {"input_ids": ids, "attention_mask": mask}


def test_load_from_causal_lm_creates_a_seeded_small_head(tiny_model_dir, tok):
    rm = load_reward_model(tiny_model_dir, num_labels=3)
    assert type(rm).__name__ == "LlamaForSequenceClassification" and rm.config.num_labels == 3
    assert rm.config.pad_token_id == tok.pad_token_id
    w = rm.score.weight  # (3, H): std 1 / sqrt(H + 1)
    assert w.shape == (3, 32) and abs(w.mean().item()) < 0.1 and 0.08 < w.std().item() < 0.3
    assert torch.equal(w, load_reward_model(tiny_model_dir, num_labels=3).score.weight)
    assert not torch.equal(w, load_reward_model(tiny_model_dir, num_labels=3, seed=1).score.weight)
    backbone = load_reward_model(tiny_model_dir).model.layers[0].mlp.up_proj.weight
    assert torch.equal(backbone, rm.model.layers[0].mlp.up_proj.weight)  # backbone weights loaded, not new


def test_pad_token_id_comes_from_the_tokenizer(tiny_model_dir, tmp_path):
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["pad_token_id"] = None
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    assert load_reward_model(tmp_path / "m").config.pad_token_id == 0


def test_score_is_read_at_the_last_non_pad_token(tiny_model_dir, tok):
    """A row scores the same alone, inside a padded batch, and with more right padding; and equals
    score_head(final hidden state at the last real token)."""
    rm = load_reward_model(tiny_model_dir, num_labels=2).eval()
    with torch.no_grad():
        batch = encode(tok, TEXTS[:3])
        scores = reward_scores(rm, batch)
        assert scores.shape == (3, 2) and scores.dtype == torch.float32
        torch.testing.assert_close(reward_scores(rm, encode(tok, TEXTS[:3], extra_pad=5)), scores, atol=1e-5,
                                   rtol=1e-5)
        alone = reward_scores(rm, encode(tok, TEXTS[:1]))
        torch.testing.assert_close(alone[0], scores[0], atol=1e-5, rtol=1e-5)
        hidden = rm.model(**batch).last_hidden_state  # (B, T, H)
        last = batch["attention_mask"].sum(-1) - 1
        torch.testing.assert_close(rm.score(hidden[torch.arange(3), last]), scores, atol=1e-6, rtol=1e-6)


def test_scores_a_preference_batch_and_backprops(tiny_model_dir, tok):
    """collate_preference: rows [0, B) chosen, [B, 2B) rejected; BT loss has a gradient on the head."""
    rm = load_reward_model(tiny_model_dir)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    features = [{"prompt_ids": enc("what is 12+30?"), "chosen_ids": enc(" 42"), "rejected_ids": enc(" 7 or so"),
                 "row": 0},
                {"prompt_ids": enc("the movie"), "chosen_ids": enc(" was great and wonderful"),
                 "rejected_ids": enc(" was bad"), "row": 1}]
    batch = collate_preference(features, tok.pad_token_id)
    scores = reward_scores(rm, batch)[:, 0]  # (2B,)
    assert scores.shape == (4,)
    losses, _ = bradley_terry_loss(scores[:2], scores[2:])
    losses.mean().backward()
    assert rm.score.weight.grad is not None and rm.score.weight.grad.abs().sum() > 0
    row = torch.tensor(features[1]["prompt_ids"] + features[1]["rejected_ids"])[None]  # last rejected row, alone
    with torch.no_grad():
        single = reward_scores(rm, {"input_ids": row, "attention_mask": torch.ones_like(row)})
    torch.testing.assert_close(single[0, 0], scores[3].detach(), atol=1e-5, rtol=1e-5)


def test_packed_batches_are_refused(tiny_model_dir, tok):
    rm = load_reward_model(tiny_model_dir)
    batch = encode(tok, TEXTS[:1])
    with pytest.raises(ValueError, match="packed"):
        reward_scores(rm, {"input_ids": batch["input_ids"], "position_ids": torch.arange(batch["input_ids"].shape[1])})


@pytest.mark.parametrize("num_labels", [1, 3])
def test_saved_model_scores_identically_with_plain_transformers(tiny_model_dir, tok, tmp_path, num_labels):
    rm = load_reward_model(tiny_model_dir, num_labels=num_labels).eval()
    save_reward_model(rm, tok, tmp_path)
    assert list(tmp_path.glob("*.safetensors")) and not (tmp_path / "gating.safetensors").exists()
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    batch = encode(tok, TEXTS)
    with torch.no_grad():
        ours = reward_scores(rm, batch)
        theirs = plain(**batch).logits
    assert theirs.shape == (len(TEXTS), num_labels)
    torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=0)
    again = load_reward_model(tmp_path)  # a saved reward model keeps its head and output count
    assert again.config.num_labels == num_labels and torch.equal(again.score.weight, rm.score.weight)
    with pytest.raises(ConfigError, match="num_labels"):
        load_reward_model(tmp_path, num_labels=num_labels + 1)


def test_normalization_round_trip(tiny_model_dir, tok, tmp_path):
    """Whitened reference scores have mean 0 and std 1 per output, also after a plain transformers reload."""
    rm = load_reward_model(tiny_model_dir, num_labels=3).eval()
    batch = encode(tok, TEXTS)
    with torch.no_grad():
        ref = reward_scores(rm, batch)  # (N, K)
    torch.testing.assert_close(normalize_scores(ref, rm), ref)  # nothing stored yet: unchanged
    gain, bias = compute_normalization(ref)
    assert len(gain) == len(bias) == 3
    save_reward_model(rm, tok, tmp_path, gain=gain, bias=bias)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["alignlab_reward_gain"] == pytest.approx(gain) and cfg["alignlab_reward_bias"] == pytest.approx(bias)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        whitened = normalize_scores(plain(**batch).logits, plain)
    torch.testing.assert_close(whitened.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(whitened.std(0), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalize_scores(ref, rm.config), whitened, atol=1e-5, rtol=0)  # live model too
    with pytest.raises(ValueError, match="at least 2"):
        compute_normalization(ref[:1])
    with pytest.raises(ValueError, match="spread"):
        compute_normalization(torch.ones(4, 2))
    with pytest.raises(ValueError, match="gain"):
        save_reward_model(rm, tok, tmp_path / "x", gain=[1.0])


def test_ensemble_members_share_one_backbone(tiny_model_dir, tok, tmp_path):
    rm = load_reward_model(tiny_model_dir, num_labels=4, ensemble=True)
    assert ensemble_size(rm) == 4 and ensemble_size(load_reward_model(tiny_model_dir)) is None
    save_reward_model(rm, tok, tmp_path)
    assert ensemble_size(AutoModelForSequenceClassification.from_pretrained(tmp_path).config) == 4
    with torch.no_grad():
        scores = reward_scores(rm, encode(tok, TEXTS[:2]))
    assert scores.shape == (2, 4) and scores.std(-1).min() > 0  # members differ (independent head rows)


def test_gating_network_weights_and_save_load(tiny_model_dir, tok, tmp_path):
    rm = load_reward_model(tiny_model_dir, num_labels=3).eval()
    torch.manual_seed(0)
    gate = GatingNetwork(rm.config.hidden_size, 3, hidden=16, temperature=2.0)
    prompts = encode(tok, ["what is 12+30?", "the movie was"])
    with torch.no_grad():
        h = prompt_hidden_states(rm, prompts)
        alone = prompt_hidden_states(rm, encode(tok, ["the movie was"]))
        weights = gate(h)
    assert h.shape == (2, 32) and weights.shape == (2, 3)
    torch.testing.assert_close(alone[0], h[1], atol=1e-5, rtol=1e-5)  # last real prompt token, not padding
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert (weights > 0).all()
    save_reward_model(rm, tok, tmp_path, gating=gate)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["alignlab_gating"]["num_objectives"] == 3 and (tmp_path / "gating.safetensors").exists()
    loaded = load_gating(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(h), weights, atol=0, rtol=0)
    assert not hasattr(rm.config, "alignlab_gating")  # the live config is left as it was
    save_reward_model(rm, tok, tmp_path)  # saved again without a gate: none declared, none on disk
    assert load_gating(tmp_path) is None and not (tmp_path / "gating.safetensors").exists()
    with pytest.raises(ValueError, match="objectives"):
        save_reward_model(rm, tok, tmp_path, gating=GatingNetwork(32, 2))


def test_gate_learns_to_trust_the_right_objective():
    """Stage 2 on synthetic attributes: objective 0 decides the preference for prompts of one kind and
    objective 1 for the other; a few SGD steps of gated_bt_loss lower the loss and route each kind."""
    gen = torch.Generator().manual_seed(0)
    kind = torch.arange(64) % 2  # (B,)
    h = torch.nn.functional.one_hot(kind, 2).float() + 0.1 * torch.randn(64, 2, generator=gen)
    chosen, rejected = torch.randn(64, 2, generator=gen), torch.randn(64, 2, generator=gen)
    good = torch.where(kind[:, None] == torch.arange(2), 1.0, -1.0)  # the objective that decides is right
    chosen, rejected = chosen + good, rejected - good
    torch.manual_seed(0)
    gate = GatingNetwork(2, 2, hidden=8)
    opt = torch.optim.SGD(gate.parameters(), lr=1.0)
    first = gated_bt_loss(gate(h), chosen, rejected)[0].mean().item()
    for _ in range(40):
        opt.zero_grad()
        gated_bt_loss(gate(h), chosen, rejected)[0].mean().backward()
        opt.step()
    assert gated_bt_loss(gate(h), chosen, rejected)[0].mean().item() < first
    w = gate(h).detach()
    assert w[kind == 0, 0].mean() > 0.9 and w[kind == 1, 1].mean() > 0.9


def test_process_reward_model_scores_at_separators(tiny_model_dir, tok, tmp_path):
    prm = load_process_reward_model(tiny_model_dir).eval()
    assert type(prm).__name__ == "LlamaForTokenClassification" and prm.config.num_labels == 1
    assert prm.dropout.p == 0.0
    sep = tok("?", add_special_tokens=False)["input_ids"][-1]
    batch = encode(tok, ["what is 12+30? the answer is 42?", "the movie? great"])
    positions = step_separator_mask(batch["input_ids"], sep, response_mask=batch["attention_mask"])
    n = int(positions.sum())
    assert n >= 3
    with torch.no_grad():
        logits = step_scores(prm, batch, positions)
        full = prm(**batch).logits[..., 0]
    assert logits.shape == (n,) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, full[positions])  # row-major order of positions.nonzero()
    alone = encode(tok, ["the movie? great"])
    with torch.no_grad():
        single = step_scores(prm, alone, step_separator_mask(alone["input_ids"], sep))
    torch.testing.assert_close(single, logits[-single.shape[0]:], atol=1e-5, rtol=1e-5)
    prm.train()
    process_reward_loss(step_scores(prm, batch, positions), torch.rand(n) > 0.5).mean().backward()
    assert prm.score.weight.grad.abs().sum() > 0
    save_reward_model(prm.eval(), tok, tmp_path)
    plain = AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits[..., 0][positions], logits, atol=1e-6, rtol=0)


def test_lora_reward_model_merges_and_loads_with_plain_transformers(tiny_model_dir, tok, tmp_path):
    rm = apply_reward_lora(load_reward_model(tiny_model_dir, num_labels=2), r=4, alpha=8)
    trainable = [n for n, p in rm.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and any("score" in n for n in trainable)
    assert all("lora_" in n or "score" in n for n in trainable)
    with torch.no_grad():  # move adapters and head away from their initialization
        for p in rm.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    rm.eval()
    batch = encode(tok, TEXTS)
    with torch.no_grad():
        ours = reward_scores(rm, batch)
    save_reward_model(rm, tok, tmp_path)
    assert any("lora_" in n for n, _ in rm.named_parameters())  # the trained model keeps its adapters
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert not any("lora" in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, ours, atol=1e-5, rtol=1e-5)


def test_pad_equal_to_eos_is_reported(tiny_model_dir, caplog):
    """With pad = EOS, transformers' pooling treats a trailing EOS as padding: the loader says so."""
    tok = load_tokenizer(tiny_model_dir)
    tok.pad_token = tok.eos_token
    with caplog.at_level("WARNING", logger="alignlab.models.reward"):
        rm = load_reward_model(tiny_model_dir, tokenizer=tok)
    assert rm.config.pad_token_id == tok.eos_token_id and "pad token is the EOS token" in caplog.text
