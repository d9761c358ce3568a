"""Schema detection and normalization on a hand-written fixture of each public schema, plus bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab.data import (
    AttributeExample,
    PreferencePair,
    PromptCompletion,
    PromptOnly,
    RankedList,
    UnpairedExample,
    detect_schema,
    normalize,
    read_rows,
)
from alignlab.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str, kind: str, **kw):
    rows = read_rows(FIXTURES / name)
    return detect_schema(rows[0].data), normalize(rows, kind, **kw)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_hh_rlhf_transcripts_become_messages():
    schema, pairs = load("hh_rlhf.jsonl", "preference")
    assert schema == "hh-rlhf"
    first = pairs[0]
    assert first.prompt == [user("What are some cuss words in english?"),
                            assistant("I'd rather not list those."), user("Why not?")]
    assert first.chosen == [assistant("Because they could hurt someone, but I'm happy to talk about why "
                                      "people swear.")]
    assert first.rejected == [assistant("Fine, here is a long list of them.")]
    assert (first.row, pairs[1].row) == (1, 2) and first.source.endswith("hh_rlhf.jsonl")


def test_ultrafeedback_strips_the_repeated_user_turn():
    schema, pairs = load("ultrafeedback.jsonl", "preference")
    assert schema == "ultrafeedback"
    assert pairs[1].prompt == [user("What is 12+30?")]
    assert pairs[1].chosen == [assistant("12 + 30 = 42.")]
    assert pairs[1].rejected == [assistant("It is 32.")]
    assert (pairs[1].score_chosen, pairs[1].score_rejected) == (10.0, 1.0)
    assert pairs[1].extra["prompt_id"] == "c3d4"


def test_trl_preference_standard_and_conversational():
    schema, pairs = load("preference_standard.jsonl", "preference")
    assert schema == "preference"
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == ("The sky is", " blue.", " green.")
    schema, pairs = load("preference_conversational.jsonl", "preference")
    assert schema == "preference"
    assert pairs[1].prompt == [{"role": "system", "content": "Be brief."}, user("Was the film good?")]
    assert pairs[1].rejected == [assistant("a truly awful plot")]


def test_implicit_prompt_strings_cut_at_a_word_boundary():
    schema, pairs = load("preference_implicit.jsonl", "preference")
    assert schema == "preference-implicit"
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == (
        "Question: what is 12+30?\nAnswer: ", "42", "32")
    # the shared prefix "The film was " ends at a space; "great"/"terrible" share no letters anyway
    assert (pairs[1].prompt, pairs[1].chosen, pairs[1].rejected) == (
        "The film was ", "great and moving", "terrible")


def test_implicit_prompt_messages_share_leading_turns():
    schema, pairs = load("preference_implicit_conversational.jsonl", "preference")
    assert schema == "preference-implicit"
    assert pairs[0].prompt == [user("What color is the sky?")]
    assert pairs[0].chosen == [assistant("It is blue.")] and pairs[0].rejected == [assistant("It is green.")]


def test_kto_unpaired():
    schema, examples = load("kto.jsonl", "unpaired")
    assert schema == "kto"
    assert [(e.completion, e.label) for e in examples] == [(" blue.", True), (" green.", False),
                                                            (" wonderful", True)]
    _, sft = load("kto.jsonl", "sft")  # only desirable completions are imitated
    assert [e.row for e in sft] == [1, 3]


def test_summarize_from_feedback_comparisons():
    schema, pairs = load("summarize_feedback.jsonl", "preference")
    assert schema == "summarize-feedback"
    title = "SUBREDDIT: r/Cooking\n\nTITLE: Why does my rice keep burning?\n\nPOST: I have been"
    assert pairs[0].prompt.startswith(title)
    assert pairs[0].prompt.endswith("\n\nTL;DR:")
    assert pairs[0].chosen == " New cook keeps burning rice despite following directions."
    assert pairs[1].chosen.startswith(" Roommate ignores") and pairs[1].rejected == " Roommate."


def test_shp_labels_pick_the_preferred_reply():
    schema, pairs = load("shp.jsonl", "preference")
    assert schema == "shp"
    assert pairs[0].chosen.startswith("Salt seasons") and pairs[0].rejected.startswith("It makes")
    assert (pairs[0].score_chosen, pairs[0].score_rejected) == (52, 7)
    assert pairs[1].chosen.startswith("Rayleigh") and pairs[1].rejected.startswith("Because")
    assert (pairs[1].score_chosen, pairs[1].score_rejected) == (40, 3)
    assert pairs[1].prompt == "Why is the sky blue?" and pairs[1].extra["domain"] == "askscience_train"


def test_helpsteer2_attributes_and_sft():
    schema, examples = load("helpsteer2.jsonl", "attributes")
    assert schema == "helpsteer"
    assert isinstance(examples[0], AttributeExample)
    assert examples[1].scores == {"helpfulness": 0.0, "correctness": 0.0, "coherence": 3.0, "complexity": 0.0,
                                  "verbosity": 0.0}
    _, sft = load("helpsteer2.jsonl", "sft")
    assert sft[1] == PromptCompletion("What is 12+30?", "32", source=sft[1].source, row=2)


def test_gsm8k_prompts_keep_the_final_answer():
    schema, prompts = load("gsm8k.jsonl", "prompt")
    assert schema == "gsm8k"
    assert isinstance(prompts[0], PromptOnly) and prompts[0].prompt.startswith("Natalia sold clips")
    assert prompts[0].extra["answer"] == "72"
    assert prompts[1].extra["answer"] == "42" and prompts[1].extra["source"] == "handwritten"
    _, sft = load("gsm8k.jsonl", "sft")
    assert sft[1].completion.endswith("#### 42")


def test_alpaca_joins_instruction_and_input():
    schema, examples = load("alpaca.json", "sft")
    assert schema == "alpaca"
    assert examples[0].prompt == "Give three tips for staying healthy."
    assert examples[1].prompt == ("Classify the sentiment of the review.\n\n"
                                  "the film was terrible, boring and far too long")
    assert examples[1].completion == "negative"


def test_sharegpt_maps_speakers_and_keeps_every_reply():
    schema, examples = load("sharegpt.jsonl", "sft")
    assert schema == "sharegpt"
    first = examples[0]
    system = {"role": "system", "content": "You are a film critic."}
    assert first.prompt == [system, user("Was the movie good?")]
    assert [m["role"] for m in first.completion] == ["assistant", "user", "assistant"]


def test_prompt_completion_and_messages():
    schema, examples = load("prompt_completion.jsonl", "sft")
    assert schema == "prompt-completion" and examples[0].completion == " great and the acting was wonderful"
    schema, examples = load("prompt_completion_conversational.jsonl", "sft")
    assert schema == "prompt-completion" and examples[1].completion == [assistant("the answer is 42")]
    schema, examples = load("messages.jsonl", "sft")
    assert schema == "messages"
    system = {"role": "system", "content": "Answer with a number."}
    assert examples[1].prompt == [system, user("what is 12+30?")]
    assert examples[1].completion == [assistant("42")]


def test_ranked_lists_and_their_pairs():
    schema, ranked = load("ranked.jsonl", "ranked")
    assert schema == "ranked" and isinstance(ranked[0], RankedList)
    assert ranked[0].ranks == [2, 0, 1] and ranked[1].scores == [1.0, 0.0, 0.5]
    _, pairs = load("ranked.jsonl", "preference")
    assert pairs[0].chosen == " an excellent, moving and very funny film"
    assert pairs[0].rejected == " a truly awful plot"
    assert (pairs[1].chosen, pairs[1].rejected, pairs[1].score_chosen) == (" 42", " 32", 1.0)


def test_pairs_as_unpaired_sft_and_ranked():
    rows = read_rows(FIXTURES / "preference_standard.jsonl")
    unpaired = normalize(rows, "unpaired")
    assert unpaired[:2] == [UnpairedExample("The sky is", " blue.", True, source=rows[0].source, row=1),
                            UnpairedExample("The sky is", " green.", False, source=rows[0].source, row=1)]
    assert len(unpaired) == 4
    assert [e.completion for e in normalize(rows, "sft")] == [" blue.", " great and the acting was wonderful"]
    assert normalize(rows, "ranked")[0].completions == [" blue.", " green."]


def test_columns_mapping_overrides_detection():
    rows = read_rows(FIXTURES / "gsm8k.jsonl")
    examples = normalize(rows, "sft", columns={"prompt": "question", "completion": "answer"})
    assert isinstance(examples[0], PromptCompletion) and examples[0].prompt.startswith("Natalia")
    rows = [{"q": "hi", "good": " yes", "bad": " no"}]
    pair = normalize(rows, "preference", columns={"prompt": "q", "chosen": "good", "rejected": "bad"})[0]
    assert isinstance(pair, PreferencePair)
    assert (pair.prompt, pair.chosen, pair.rejected) == ("hi", " yes", " no")


def test_columns_mapping_to_a_missing_column():
    with pytest.raises(DataError, match="column 'query' .*not found; columns: question, answer") as info:
        normalize(read_rows(FIXTURES / "gsm8k.jsonl"), "sft", columns={"prompt": "query"})
    assert info.value.field == "query" and info.value.row == 1


def bad(tmp_path, rows, kind="preference", **kw):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError) as info:
        normalize(read_rows(path), kind, **kw)
    assert "bad.jsonl" in str(info.value)
    return info.value


GOOD = {"prompt": "p", "chosen": " a", "rejected": " b"}


def test_missing_field_names_row_and_field(tmp_path):
    error = bad(tmp_path, [GOOD, {"prompt": "p", "chosen": " a", "rejected": None}])
    assert (error.row, error.field) == (2, "rejected") and "row 2, field 'rejected': missing" in str(error)


def test_wrong_types_name_the_field(tmp_path):
    error = bad(tmp_path, [GOOD, {**GOOD, "chosen": 5}])
    assert (error.row, error.field) == (2, "chosen") and "expected a string or a list of" in str(error)
    error = bad(tmp_path, [{"prompt": "p", "completion": " a", "label": "yes"}], "unpaired")
    assert error.field == "label" and "expected true (desirable) or false" in str(error)
    error = bad(tmp_path, [{**GOOD, "score_chosen": "high"}])
    assert error.field == "score_chosen" and "expected a number" in str(error)


def test_empty_completions(tmp_path):
    error = bad(tmp_path, [GOOD, GOOD, {**GOOD, "rejected": "  "}])
    assert (error.row, error.field) == (3, "rejected") and "is empty" in str(error)
    error = bad(tmp_path, [{"prompt": "p", "completion": ""}], "sft")
    assert (error.row, error.field) == (1, "completion")
    error = bad(tmp_path, [{"messages": [user("hi"), assistant("")]}], "sft")
    assert error.field == "messages" and "no non-empty assistant message" in str(error)


def test_mapped_column_errors_use_the_dataset_name(tmp_path):
    error = bad(tmp_path, [{"q": "hi", "a": ""}], "sft", columns={"prompt": "q", "completion": "a"})
    assert error.field == "a"


def test_unknown_schema_lists_columns_and_suggests_mapping(tmp_path):
    error = bad(tmp_path, [{"text": "hello", "id": 3}], "sft")
    message = str(error)
    assert "columns (text, id)" in message and "--data.columns" in message and "Alpaca" in message


def test_kind_the_schema_cannot_provide(tmp_path):
    error = bad(tmp_path, [{"prompt": "p", "completion": " c"}], "preference")
    assert "a 'prompt-completion' dataset has no chosen/rejected pair" in str(error)
