"""Shared fixtures: a tiny tokenizer and a tiny random Llama, built in-process (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

CORPUS = [
    "the movie was great and the acting was wonderful",
    "the film was terrible, boring and far too long",
    "what is 12+30? the answer is 42",
    "i loved the story but the ending was not good",
    "a truly awful plot with very bad dialogue",
    "an excellent, moving and very funny film",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from alignlab.lab.tokenizer import build_tokenizer

    return build_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved random tiny Llama + tokenizer directory, loadable with plain transformers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tiny_tokenizer.pad_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
        bos_token_id=tiny_tokenizer.bos_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    path = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def lab_cache(tmp_path_factory):
    """A fresh lab cache directory; `ALIGNLAB_CACHE` points at it for the whole session."""
    path = tmp_path_factory.mktemp("alignlab_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNLAB_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def tiny_path(lab_cache):
    """The default `lab:tiny` build (about 30 s on one CPU thread), built once per test session."""
    from alignlab.lab.base import tiny_model_path

    return tiny_model_path(progress=False)
