"""Lab fixtures: one session-wide lab cache in a tmp dir, where the DEFAULT tiny model is built once."""

from __future__ import annotations

import pytest


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


@pytest.fixture(scope="session")
def tiny(tiny_path):
    """(model, tokenizer) loaded with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_path), AutoTokenizer.from_pretrained(tiny_path)
