"""The tiny base model: cached default build, plain-transformers loading, sample quality, determinism."""

from __future__ import annotations

import dataclasses
import json
import statistics
import threading
import time

import torch
from safetensors.torch import load_file

from alignlab.lab.base import BaseModelSpec, cache_root, tiny_model_path
from alignlab.lab.tasks import sentiment

# A seconds-long build for the cache mechanics; the model itself is tested on the default build.
SMALL = BaseModelSpec(n_reviews=200, n_problems_per_level=20, vocab_size=300, hidden_size=32, num_layers=1,
                      num_heads=2, num_kv_heads=1, intermediate_size=64, steps=3, batch_size=4)


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "a"))
    assert cache_root() == tmp_path / "a"
    monkeypatch.delenv("ALIGNLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "alignlab"
    assert cache_root(tmp_path / "c") == tmp_path / "c"


def test_default_build_is_cached_and_complete(tiny_path, lab_cache):
    assert tiny_path.parent == lab_cache / "models" and BaseModelSpec().key() in tiny_path.name
    report = json.loads((tiny_path / "lab_build.json").read_text())
    assert 500_000 < report["parameters"] < 3_000_000
    assert report["final_loss"] < 1.5
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (tiny_path / name).exists(), name
    start = time.perf_counter()
    assert tiny_model_path() == tiny_path  # cached: no rebuild
    assert time.perf_counter() - start < 1.0
    assert not [p for p in tiny_path.parent.iterdir() if p.name.startswith(".tmp")]


def _sample(model, tokenizer, prompts, seed=0, max_new_tokens=40):
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
    tokenizer.padding_side = "right"
    new = out[:, enc["input_ids"].shape[1]:]
    return tokenizer.batch_decode(new, skip_special_tokens=True), new


def test_base_model_writes_balanced_review_like_text(tiny):
    model, tokenizer = tiny
    assert tokenizer.eos_token == "<|end|>" and tokenizer.chat_template
    prompts = sentiment.prompts(64, seed=7)
    texts, new = _sample(model, tokenizer, prompts)
    gold = sentiment.gold_reward([p + t for p, t in zip(prompts, texts)])
    assert 0.3 < statistics.mean(gold) < 0.7, statistics.mean(gold)
    assert min(gold) < 0.3 and max(gold) > 0.7  # both polarities occur
    has_lexicon = [any(w in sentiment.LEXICON for w in sentiment.tokenize(t)) for t in texts]
    assert statistics.mean(has_lexicon) > 0.8
    assert (new == tokenizer.eos_token_id).any(dim=1).float().mean() > 0.5  # learned to stop


def test_small_build_deterministic_and_keyed(tmp_path):
    a = tiny_model_path(tmp_path / "a", spec=SMALL, progress=False)
    b = tiny_model_path(tmp_path / "b", spec=SMALL, progress=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    other = dataclasses.replace(SMALL, seed=1)
    assert other.key() != SMALL.key()
    c = tiny_model_path(tmp_path / "a", spec=other, progress=False)
    assert c != a and c.parent == a.parent
    k = "model.embed_tokens.weight"
    wc = load_file(c / "model.safetensors")[k]
    assert wc.shape != wa[k].shape or not torch.equal(wc, wa[k])


def test_concurrent_builds_share_one_result(tmp_path):
    results, errors = [], []

    def build():
        try:
            results.append(tiny_model_path(tmp_path, spec=SMALL, progress=False))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    built = [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]
    assert built == [results[0].name]
