"""Lab fixtures (the session-wide lab cache and `tiny_path` live in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny(tiny_path):
    """(model, tokenizer) loaded with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_path), AutoTokenizer.from_pretrained(tiny_path)
