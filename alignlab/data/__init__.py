"""alignlab.data: read rows -> normalize to example types -> tokenize with masks -> batch or pack.

    rows = read_rows("prefs.jsonl")
    pairs = normalize(rows, "preference")
    features, report = tokenize_preference(pairs, tokenizer, max_length=512)
    batch = collate_preference([features[i] for i in idx], tokenizer.pad_token_id)
"""

from alignlab.data.batching import (
    collate,
    collate_packed,
    collate_preference,
    collate_shared_prompt,
    feature_length,
    make_batches,
    pack,
    packed_padding_fraction,
    padding_fraction,
    shared_prompt_length,
)
from alignlab.data.io import Row, read_rows
from alignlab.data.schemas import KINDS, detect_schema, normalize
from alignlab.data.tokenize import TruncationReport, tokenize_preference, tokenize_prompts, tokenize_sft
from alignlab.data.types import (
    AttributeExample,
    Example,
    PreferencePair,
    PromptCompletion,
    PromptOnly,
    RankedList,
    StepLabeled,
    UnpairedExample,
)

__all__ = [
    "KINDS", "AttributeExample", "Example", "PreferencePair", "PromptCompletion", "PromptOnly", "RankedList",
    "Row", "StepLabeled", "TruncationReport", "UnpairedExample", "collate", "collate_packed", "collate_preference",
    "collate_shared_prompt", "detect_schema", "feature_length", "make_batches", "normalize", "pack",
    "packed_padding_fraction", "padding_fraction", "read_rows", "shared_prompt_length", "tokenize_preference",
    "tokenize_prompts", "tokenize_sft",
]
