"""Rollout dtype bf16: sampling from bfloat16 copies of a float32 policy (rollout.precision), in every engine path,
the trainer's weights untouched, updates seen, and a GRPO run through the CLI with truncated IS."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignlab.cli import main as cli_main
from alignlab.config import RolloutConfig
from alignlab.errors import ConfigError
from alignlab.models import compute_logprobs
from alignlab.rollout import HFEngine, NativeEngine, Sampling, make_engine, rollout_weights
from alignlab.rollout import fused as fused_module

PROMPTS = ["the movie was", "what is 12+30? the answer is", "a truly awful plot with very bad", "i"]
ENGINES = ["native-fused", "native-onednn", "native-generic", "hf"]


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _engine(kind, model, tok, monkeypatch, dtype="bf16"):
    if kind == "hf":
        return HFEngine(model, tok, dtype=dtype)
    if kind == "native-onednn":  # the blocked bf16 layout big models get, forced on the tiny one
        monkeypatch.setattr(fused_module, "ONEDNN_MIN_BYTES", 0)
        pack = fused_module.pack_linear

        def checked(weight, onednn):
            packed = pack(weight, onednn)
            assert weight.dtype == torch.bfloat16 and packed[1] == fused_module.ONEDNN, "not a oneDNN bf16 packing"
            return packed
        monkeypatch.setattr(fused_module, "pack_linear", checked)
    return NativeEngine(model, tok, batch_size=3, fused=kind != "native-generic", dtype=dtype)


def _greedy_agreement(model, ro) -> float:
    """Share of completion tokens that are the float32 model's argmax given the same prefix (teacher forced)."""
    b = ro.batch()
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    hit = logits[:, :-1].argmax(-1) == b["input_ids"][:, 1:]
    return float(hit[b["response_mask"][:, 1:]].float().mean())


@pytest.mark.parametrize("kind", ENGINES)
def test_bf16_rollouts_track_the_fp32_model(tiny_model_dir, tiny_tokenizer, kind, monkeypatch):
    """Greedy bf16 tokens are the fp32 argmax on most positions; recorded log-probs are the bf16 model's: within
    bf16 rounding of fp32 compute_logprobs, but not equal to them (the engine really ran in bf16)."""
    model = _load(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eng = _engine(kind, model, tiny_tokenizer, monkeypatch)
    greedy = eng.generate(PROMPTS, 2, Sampling(max_new_tokens=24, temperature=0))
    assert _greedy_agreement(model, greedy) >= 0.9
    ro = eng.generate(PROMPTS, 3, Sampling(max_new_tokens=16, temperature=1.0), seed=1)
    with torch.no_grad():
        ref = compute_logprobs(model, ro.batch(), temperature=1.0).logprobs
    diff = (ro.logprobs - ref)[ro.response_mask].abs()
    assert ro.logprobs.dtype == torch.float32
    assert 0 < diff.max() < 0.05 and diff.mean() < 0.01
    # the trainer's weights: same tensors, same dtype, bit for bit
    assert all(v.dtype == torch.float32 and torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bf16_weight_updates_between_calls_are_seen(tiny_model_dir, tiny_tokenizer):
    """The bf16 copy is made from the current weights on every call: after an optimizer step the greedy
    continuations change, and they follow the updated float32 model."""
    model = _load(tiny_model_dir)
    eng = NativeEngine(model, tiny_tokenizer, batch_size=4, dtype="bf16")
    sampling = Sampling(max_new_tokens=8, temperature=0)
    before = eng.generate(PROMPTS, 1, sampling)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    enc = tiny_tokenizer(PROMPTS[:1], return_tensors="pt")
    (-10 * model(**enc, labels=enc["input_ids"]).loss).backward()  # a large step: greedy continuations change
    opt.step()
    model.eval()
    after = eng.generate(PROMPTS, 1, sampling)
    assert after.completions != before.completions
    assert _greedy_agreement(model, after) >= 0.9


def test_auto_is_a_no_op_and_bad_names_are_config_errors(tiny_model_dir, tiny_tokenizer):
    model = _load(tiny_model_dir)
    storage = [p.data_ptr() for p in model.parameters()]
    with rollout_weights(model, "auto"):
        assert [p.data_ptr() for p in model.parameters()] == storage
    with rollout_weights(model, "bf16"):
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert [p.data_ptr() for p in model.parameters()] == storage  # the very same tensors are back
    sampling = Sampling(max_new_tokens=12, temperature=1.0)
    a = NativeEngine(model, tiny_tokenizer).generate(PROMPTS, 2, sampling, seed=5)
    b = make_engine(model, tiny_tokenizer, dtype="auto").generate(PROMPTS, 2, sampling, seed=5)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.logprobs, b.logprobs)
    assert make_engine(model, tiny_tokenizer, backend="hf", dtype="bf16").dtype == "bf16"
    for bad in (lambda: make_engine(model, tiny_tokenizer, dtype="fp8"),
                lambda: NativeEngine(model, tiny_tokenizer, dtype="float16"),
                lambda: RolloutConfig(dtype="fp8")):
        with pytest.raises(ConfigError, match="dtype"):
            bad()


def test_grpo_cli_with_bf16_rollouts_and_truncated_is(tiny_model_dir, tmp_path):
    """GRPO from the CLI sampling in bf16 with TIS on: finite metrics, and IS weights near (not exactly) 1."""
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"what is {i}+{i}?"}) + "\n" for i in range(8)))
    (tmp_path / "rewards.py").write_text("def letters(prompts, completions):\n"
                                         "    return [c.count('e') / (1 + len(c)) for c in completions]\n")
    out = tmp_path / "run"
    args = ["grpo", "--model", str(tiny_model_dir), "--dataset", str(data), "--output-dir", str(out),
            "--max-steps", "2", "--reward.sources", f"python:{tmp_path / 'rewards.py'}:letters",
            "--rollout.prompts-per-step", "2", "--rollout.group-size", "2", "--rollout.max-new-tokens", "6",
            "--rollout.dtype", "bf16", "--pg.tis-cap", "2.0", "--log.log-every", "1", "--log.progress", "False",
            "--log.tensorboard", "False", "--data.eval-fraction", "0"]
    assert cli_main(args) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert all(math.isfinite(v) for m in lines for v in m.values() if isinstance(v, float))
    assert all(0 < abs(m["is_weight"] - 1) < 0.05 for m in lines)
    assert "dtype: bf16" in (out / "config.yaml").read_text()
