"""GRM text-generation regularizer of `alignlab rm` (Yang et al. 2024): the causal LM's head over the reward model's
hidden states, limiting case coef 0, gradients into the backbone, and the CLI end to end with a plain-transformers
reload that ignores nothing and scores identically."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from alignlab.data import collate_preference, normalize, read_rows, tokenize_preference
from alignlab.errors import ConfigError
from alignlab.losses.reward import bradley_terry_loss
from alignlab.models import compute_logprobs
from alignlab.models.reward import load_lm_head, load_reward_model, reward_scores
from alignlab.recipes.reward import RewardOptions, _bt
from alignlab.recipes.reward_data import shared_prompt_batch
from alignlab.recipes.reward_terms import lm_regularizer, scores_and_hidden

from .test_reward import LABELER_TEMPERATURE, cli, config, lab_pairs, pair_rows, write_jsonl


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl",
                       pair_rows(lab_pairs(48, seed=5, temperature=LABELER_TEMPERATURE)))


@pytest.fixture(scope="module", params=["untied", "tied"])
def lm_dir(request, tiny_model_dir, tmp_path_factory):
    """The tiny causal LM as saved (untied head), or a copy whose head is its input embedding (tied)."""
    if request.param == "untied":
        return tiny_model_dir
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    path = tmp_path_factory.mktemp("tied")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def _batches(path, data, n=4):
    tok = AutoTokenizer.from_pretrained(path)
    feats, _ = tokenize_preference(normalize(read_rows(data), "preference")[:n], tok, max_length=64)
    return collate_preference(feats, tok.pad_token_id), shared_prompt_batch(feats, tok.pad_token_id)


def test_lm_head_over_rm_hidden_states_is_the_causal_lm(lm_dir, pairs):
    """The RM's backbone is the LM's: its hidden states through `load_lm_head` give the causal LM's own log-probs
    of the chosen tokens (separate rows and shared-prompt rows), and `dpo` reads the rejected ones too."""
    rm = load_reward_model(lm_dir).eval()
    head = load_lm_head(lm_dir, rm)
    tied = AutoModelForCausalLM.from_pretrained(lm_dir).config.tie_word_embeddings
    assert (head.weight is rm.get_input_embeddings().weight) == tied and head.weight.requires_grad == tied
    lm = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    separate, shared = _batches(lm_dir, pairs)
    with torch.no_grad():
        lp = compute_logprobs(lm, separate)
        ref = lp.seq_logprobs  # (2B,) chosen then rejected
        n = ref.shape[0] // 2
        for batch in (separate, shared):
            _, hidden = scores_and_hidden(rm, batch)
            sft = lm_regularizer(rm, head, hidden, batch, kind="sft", beta=0.1)
            torch.testing.assert_close(sft, torch.nn.functional.softplus(-0.1 * ref[:n]), atol=1e-5, rtol=1e-5)
            nll = lm_regularizer(rm, head, hidden, batch, kind="nll", beta=0.1)
            torch.testing.assert_close(nll, -lp.mean_logprobs[:n], atol=1e-5, rtol=1e-5)
            dpo = lm_regularizer(rm, head, hidden, batch, kind="dpo", beta=0.5)
            torch.testing.assert_close(dpo, torch.nn.functional.softplus(-0.5 * (ref[:n] - ref[n:])), atol=1e-5,
                                       rtol=1e-5)


def test_coef_zero_is_plain_bt_and_coef_adds_the_regularizer(tiny_model_dir, pairs):
    """rm.lm_coef 0 with the head present gives exactly the plain Bradley-Terry losses; coef 0.5 adds
    0.5 * -log sigmoid(0.1 log pi(y_c|x)) with log pi from the causal LM."""
    rm = load_reward_model(tiny_model_dir).eval()
    head = load_lm_head(tiny_model_dir, rm)
    batch, _ = _batches(tiny_model_dir, pairs)
    cfg = config(tiny_model_dir, pairs, "unused")
    with torch.no_grad():
        plain = _bt(rm, batch, cfg)[0]
        cfg.rm = RewardOptions(lm_coef=0.0)
        assert torch.equal(_bt(rm, batch, cfg, lm_head=head)[0], plain)
        scores = reward_scores(rm, batch)[:, 0]
        n = scores.shape[0] // 2
        torch.testing.assert_close(plain, bradley_terry_loss(scores[:n], scores[n:])[0])
        cfg.rm = RewardOptions(lm_coef=0.5)
        lp = compute_logprobs(AutoModelForCausalLM.from_pretrained(tiny_model_dir), batch).seq_logprobs[:n]
        expected = plain + 0.5 * torch.nn.functional.softplus(-0.1 * lp)
        torch.testing.assert_close(_bt(rm, batch, cfg, lm_head=head)[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["sft", "nll"])
def test_regularizer_gradient_reaches_the_backbone_not_the_score_head(tiny_model_dir, pairs, kind):
    rm = load_reward_model(tiny_model_dir)
    head = load_lm_head(tiny_model_dir, rm)
    batch, _ = _batches(tiny_model_dir, pairs)
    _, hidden = scores_and_hidden(rm, batch)
    lm_regularizer(rm, head, hidden, batch, kind=kind, beta=0.1).sum().backward()
    grads = {name: p.grad for name, p in rm.named_parameters()}
    assert grads["score.weight"] is None  # the score does not enter the LM term
    backbone = [g for name, g in grads.items() if name.startswith("model.layers.")]
    assert backbone and all(g is not None for g in backbone) and sum(float(g.abs().sum()) for g in backbone) > 0
    assert head.weight.grad is None  # untied head: frozen


def test_options_are_checked(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="lm_coef"):
        RewardOptions(objective="kwise", lm_coef=0.1)
    with pytest.raises(ConfigError, match="lm_beta"):
        RewardOptions(lm_coef=0.1, lm_beta=0.0)
    rm = load_reward_model(tiny_model_dir)
    saved = tmp_path / "saved_rm"
    rm.save_pretrained(saved)
    with pytest.raises(ConfigError, match="not a causal-LM checkpoint"):
        load_lm_head(saved, rm)


def test_cli_grm_run_saves_a_plain_reward_model(tiny_model_dir, pairs, tmp_path):
    """`alignlab rm --rm.lm-coef` end to end: the saved RM holds no LM head, plain transformers loads it with no
    missing or unexpected weights and scores exactly as alignlab does."""
    out = tmp_path / "grm"
    proc = cli("rm", "--model", tiny_model_dir, "--dataset", pairs, "--output-dir", out,
               "--optim.max-steps", "4", "--optim.batch-size", "8", "--data.max-length", "64",
               "--rm.lm-coef", "0.5", "--log.save-every", "2", "--log.progress", "False")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in x and torch.isfinite(torch.tensor(x["loss"])) for x in lines)
    for file in [out / "model.safetensors", *out.glob("checkpoints/*/model.safetensors")]:
        with safe_open(str(file), framework="pt") as f:
            assert not [k for k in f.keys() if "lm_head" in k], file
    plain, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    batch, _ = _batches(out, pairs)
    with torch.no_grad():
        raw = plain.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert torch.equal(raw, reward_scores(load_reward_model(out).eval(), batch))


def test_grm_with_lora_and_shared_prompt_rows(lm_dir, pairs, tmp_path):
    """LoRA on the backbone (peft wraps the score head) with the regularizer on shared-prompt rows: it trains, the
    adapters are merged at save and plain transformers loads exactly the weights it needs."""
    from alignlab.recipes.reward import main

    cfg = config(lm_dir, pairs, tmp_path / "lora", steps=2, lm_coef=0.5, lm_loss="dpo")
    cfg.model.lora_r, cfg.model.lora_alpha = 4, 8
    result = main(cfg)
    assert 0 <= result["pairs"]["accuracy"] <= 1
    assert all(torch.isfinite(torch.tensor(v)) for k, v in result["last_train_metrics"].items() if k == "loss")
    _, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "lora", output_loading_info=True)
    assert not any(info.values()), info


@pytest.mark.parametrize("lm_dir", ["tied"], indirect=True)
def test_grm_resume_is_exact_with_a_tied_head(lm_dir, pairs, tmp_path, resumed_like_full):
    """The tied LM head is the RM's embedding parameter: a resumed run restores it in place and logs the same."""

    from alignlab.recipes.reward import main

    full = tmp_path / "full"
    cfg = config(lm_dir, pairs, full, steps=6, lm_coef=0.5)
    cfg.log.save_every, cfg.log.keep_checkpoints, cfg.log.log_every = 3, 0, 1
    main(cfg)
    assert resumed_like_full(main, cfg, full, (6,))
