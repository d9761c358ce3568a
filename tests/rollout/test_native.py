"""NativeEngine against the reference (HF generate): identical greedy tokens, the sampler-logprobs contract,
seeds, the Rollouts layout, other architectures, and the engine choice in make_engine."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignlab.errors import ConfigError
from alignlab.models import compute_logprobs
from alignlab.rollout import HFEngine, NativeEngine, Sampling, make_engine, native_unsupported_reason
from alignlab.rollout.cache import SlabCache

PROMPTS = ["the movie was", "what is 12+30? the answer is", "a truly awful plot with very bad", "i"]


def _load(path, **kw):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw).eval()


@pytest.fixture(scope="module")
def eos_model(tiny_model_dir, tiny_tokenizer):
    """The tiny Llama with EOS made likely: its LM-head row copies (x1.2) that of a token greedy decoding of
    PROMPTS[0] emits at step 4, so EOS wins wherever that token would; some rows stop early, others run on."""
    model = _load(tiny_model_dir)
    ro = HFEngine(model, tiny_tokenizer).generate(PROMPTS[:1], 1, Sampling(max_new_tokens=8, temperature=0))
    token = ro.input_ids[0, ro.response_mask[0]].tolist()[3]
    with torch.no_grad():
        model.lm_head.weight[tiny_tokenizer.eos_token_id] = 1.2 * model.lm_head.weight[token]
    return model


def _same(a, b):
    for key in ("input_ids", "attention_mask", "response_mask", "finished"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert a.completions == b.completions and a.prompts == b.prompts and a.n == b.n


@pytest.mark.parametrize("fused", [True, False])
def test_greedy_matches_hf_generate(eos_model, tiny_tokenizer, fused, monkeypatch):
    """Token-identical to HF greedy with prompts of 4 lengths, n=2 split across chunks of 3 rows, EOS mid-way for
    some rows (they are dropped from the batch), and the same sampler log-probs."""
    kept = []
    select = SlabCache.select
    monkeypatch.setattr(SlabCache, "select", lambda self, rows: (kept.append(len(rows)), select(self, rows))[1])
    sampling = Sampling(max_new_tokens=24, temperature=0)
    ours = NativeEngine(eos_model, tiny_tokenizer, batch_size=3, fused=fused).generate(PROMPTS, 2, sampling)
    ref = HFEngine(eos_model, tiny_tokenizer).generate(PROMPTS, 2, sampling)
    _same(ours, ref)
    assert ours.finished.any() and not ours.finished.all()  # both kinds of rows are exercised
    assert any(k < 3 for k in kept)  # finished rows were dropped from the active batch
    torch.testing.assert_close(ours.logprobs, ref.logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["plain", "onednn"])
def test_fused_weight_layouts_match_hf_generate(eos_model, tiny_tokenizer, layout, monkeypatch):
    """Both weight layouts of the fused step: plain MKL (models whose weights stay in cache, builds without oneDNN)
    and oneDNN-packed with post-ops (big float32 models on CPU; forced here by lowering the size threshold):
    token-identical to HF greedy, same log-probs."""
    from alignlab.rollout import fused

    if layout == "plain":
        monkeypatch.setattr(fused, "ONEDNN", False)
    else:
        if not fused.ONEDNN:
            pytest.skip("this torch build has no oneDNN")
        monkeypatch.setattr(fused, "ONEDNN_MIN_BYTES", 0)
    decoder = fused.FusedDecoder(eos_model)
    assert decoder.onednn == (layout == "onednn") and len(decoder.layers[0][5]) == (2 if decoder.onednn else 1)
    sampling = Sampling(max_new_tokens=24, temperature=0)
    ours = NativeEngine(eos_model, tiny_tokenizer, batch_size=3, fused=True).generate(PROMPTS, 2, sampling)
    ref = HFEngine(eos_model, tiny_tokenizer).generate(PROMPTS, 2, sampling)
    _same(ours, ref)
    torch.testing.assert_close(ours.logprobs, ref.logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_weight_updates_between_calls_are_seen(tiny_model_dir, tiny_tokenizer, fused):
    """RL trains the engine's model object in place between generate calls (no sync_weights here): the next call
    decodes with the new weights, with no stale packed copy."""
    model = _load(tiny_model_dir)
    eng = NativeEngine(model, tiny_tokenizer, batch_size=4, fused=fused)
    sampling = Sampling(max_new_tokens=8, temperature=0)
    before = eng.generate(PROMPTS, 1, sampling)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = model(**tiny_tokenizer(PROMPTS[:1], return_tensors="pt"), labels=tiny_tokenizer(PROMPTS[:1],
                 return_tensors="pt")["input_ids"]).loss
    (-10 * loss).backward()  # a large step against the data: greedy continuations change
    opt.step()
    model.eval()
    after, ref = eng.generate(PROMPTS, 1, sampling), HFEngine(model, tiny_tokenizer).generate(PROMPTS, 1, sampling)
    assert after.completions != before.completions
    _same(after, ref)


def test_layout_and_finish_reasons(eos_model, tiny_tokenizer):
    sampling = Sampling(max_new_tokens=24, temperature=0)
    ro = NativeEngine(eos_model, tiny_tokenizer).generate(PROMPTS, 1, sampling)
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    for i, prompt in enumerate(PROMPTS):
        p = tiny_tokenizer(prompt)["input_ids"]
        assert ro.input_ids[i, : len(p)].tolist() == p  # the prompt starts at column 0
        completion = ro.input_ids[i, ro.response_mask[i]].tolist()
        end = len(p) + len(completion)
        assert ro.response_mask[i, len(p):end].all() and not ro.response_mask[i, :len(p)].any()
        assert ro.attention_mask[i].tolist() == [1] * end + [0] * (ro.input_ids.shape[1] - end)
        assert (ro.input_ids[i, end:] == pad).all() and (ro.logprobs[i, end:] == 0).all()
        assert (ro.logprobs[i, :len(p)] == 0).all() and (ro.logprobs[i, len(p):end] < 0).all()
        if ro.finish_reasons[i] == "stop":  # EOS is the last counted token, nothing after it
            assert completion[-1] == eos and eos not in completion[:-1]
        else:
            assert ro.finish_reasons[i] == "length" and len(completion) == 24 and eos not in completion
    assert set(ro.finish_reasons) == {"stop", "length"}


@pytest.mark.parametrize("engine", ["native-fused", "native-generic", "hf"])
def test_sampler_logprobs_equal_compute_logprobs(eos_model, tiny_tokenizer, engine):
    """The contract PPO relies on: the sampler's log-probs are log_softmax(logits / T) of the unfiltered
    distribution, i.e. what compute_logprobs(model, batch, temperature=T) recomputes."""
    sampling = Sampling(max_new_tokens=16, temperature=0.7, top_k=20, top_p=0.9)
    eng = (HFEngine(eos_model, tiny_tokenizer) if engine == "hf" else
           NativeEngine(eos_model, tiny_tokenizer, batch_size=5, fused=engine == "native-fused"))
    ro = eng.generate(PROMPTS, 3, sampling, seed=3)
    with torch.no_grad():
        ref = compute_logprobs(eos_model, ro.batch(), temperature=0.7).logprobs
    assert ro.logprobs.dtype == torch.float32 and ro.logprobs.shape == ro.input_ids.shape
    torch.testing.assert_close(ro.logprobs, ref, atol=1e-5, rtol=0)


def test_seeded_sampling_is_reproducible(eos_model, tiny_tokenizer):
    eng = NativeEngine(eos_model, tiny_tokenizer, batch_size=4)
    sampling = Sampling(max_new_tokens=16, temperature=1.0)
    a, b = eng.generate(PROMPTS, 3, sampling, seed=7), eng.generate(PROMPTS, 3, sampling, seed=7)
    _same(a, b)
    assert torch.equal(a.logprobs, b.logprobs)
    assert eng.generate(PROMPTS, 3, sampling, seed=8).completions != a.completions
    torch.manual_seed(5)
    d = eng.generate(PROMPTS, 1, sampling)
    torch.manual_seed(5)
    assert eng.generate(PROMPTS, 1, sampling).completions == d.completions  # seed=None follows torch's RNG


def test_top_k_1_is_greedy(eos_model, tiny_tokenizer):
    eng = NativeEngine(eos_model, tiny_tokenizer)
    greedy = eng.generate(PROMPTS, 2, Sampling(max_new_tokens=16, temperature=0))
    top1 = eng.generate(PROMPTS, 2, Sampling(max_new_tokens=16, temperature=1.0, top_k=1), seed=0)
    _same(greedy, top1)
    torch.testing.assert_close(greedy.logprobs, top1.logprobs, atol=1e-6, rtol=0)  # T = 1: same distribution


def test_min_new_tokens_suppresses_eos(eos_model, tiny_tokenizer):
    sampling = Sampling(max_new_tokens=12, min_new_tokens=12, temperature=0)
    ours = NativeEngine(eos_model, tiny_tokenizer).generate(PROMPTS, 1, sampling)
    ref = HFEngine(eos_model, tiny_tokenizer).generate(PROMPTS, 1, sampling)
    _same(ours, ref)
    assert not ours.finished.any() and (ours.response_mask.sum(1) == 12).all()
    torch.testing.assert_close(ours.logprobs, ref.logprobs, atol=1e-5, rtol=0)


def test_generic_path_other_architectures(tiny_tokenizer, tiny_model_dir):
    """GPT-2 (learned absolute positions, left padding), eager attention, and a LoRA model all decode through
    the model's own forward and match HF greedy."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tok = tiny_tokenizer
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                                      pad_token_id=tok.pad_token_id)).eval()
    eager = _load(tiny_model_dir, attn_implementation="eager")
    lora = get_peft_model(_load(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                            init_lora_weights=False)).eval()
    sampling = Sampling(max_new_tokens=10, temperature=0)
    for model in (gpt2, eager, lora):
        eng = NativeEngine(model, tok, batch_size=3, fused=False if model is eager else None)
        assert not eng.uses_fused()  # gpt2 and LoRA: not supported by the fused step, so never used
        ours, ref = eng.generate(PROMPTS, 2, sampling), HFEngine(model, tok).generate(PROMPTS, 2, sampling)
        _same(ours, ref)
        torch.testing.assert_close(ours.logprobs, ref.logprobs, atol=1e-5, rtol=0)


def test_generate_leaves_the_model_as_it_was(tiny_model_dir, tiny_tokenizer):
    model = _load(tiny_model_dir).train()
    before = {k: (v.data_ptr(), v.stride(), v.clone()) for k, v in model.state_dict().items()}
    NativeEngine(model, tiny_tokenizer, fused=False).generate(PROMPTS, 2, Sampling(max_new_tokens=6), seed=0)
    assert model.training
    for k, v in model.state_dict().items():  # same storage, layout and values (decode layout undone)
        assert (v.data_ptr(), v.stride()) == before[k][:2] and torch.equal(v, before[k][2]), k


def test_make_engine_choice_and_fallback(tiny_model_dir, tiny_tokenizer, caplog):
    from transformers import MambaConfig, MambaForCausalLM

    model = _load(tiny_model_dir)
    assert isinstance(make_engine(model, tiny_tokenizer), NativeEngine)
    assert isinstance(make_engine(model, tiny_tokenizer, backend="hf"), HFEngine)
    mamba = MambaForCausalLM(MambaConfig(vocab_size=len(tiny_tokenizer), hidden_size=16, num_hidden_layers=1,
                                         state_size=4, eos_token_id=tiny_tokenizer.eos_token_id))
    assert "past_key_values" in native_unsupported_reason(mamba)
    with caplog.at_level(logging.INFO, logger="alignlab"):
        engine = make_engine(mamba, tiny_tokenizer)
    assert isinstance(engine, HFEngine) and "NativeEngine cannot run MambaForCausalLM" in caplog.text
    assert engine.generate(PROMPTS[:2], 1, Sampling(max_new_tokens=4, min_new_tokens=4)).response_mask.sum() == 8
    with pytest.raises(ConfigError, match="use backend='hf'"):
        make_engine(mamba, tiny_tokenizer, backend="native")
    with pytest.raises(ConfigError, match="unknown rollout backend"):
        make_engine(model, tiny_tokenizer, backend="tgi")


def test_vllm_backend_import_guard(tiny_model_dir, tiny_tokenizer):
    """vllm is not installed here (and there is no GPU): a clear error saying what to install."""
    with pytest.raises(ConfigError, match=r"pip install alignlab\[vllm\].*GPU"):
        make_engine(_load(tiny_model_dir), tiny_tokenizer, backend="vllm")


def test_bad_requests_are_config_errors(tiny_model_dir, tiny_tokenizer):
    eng = NativeEngine(_load(tiny_model_dir), tiny_tokenizer)
    for bad in (dict(top_p=0.0), dict(temperature=-1.0), dict(top_k=-2), dict(max_new_tokens=0),
                dict(max_new_tokens=4, min_new_tokens=5)):
        with pytest.raises(ConfigError):
            Sampling(**bad)
    with pytest.raises(ConfigError, match="list of strings"):
        eng.generate("a prompt", 1, Sampling())
    with pytest.raises(ConfigError, match="n "):
        eng.generate(PROMPTS, 0, Sampling())
    assert tiny_tokenizer("")["input_ids"] == []  # this tokenizer adds no BOS: an empty prompt has nothing
    with pytest.raises(ConfigError, match=r"prompt\(s\) \[1\] have no tokens"):
        eng.generate(["a", ""], 1, Sampling())
