"""Token features: exact response masks for standard and chat-template text, and the truncation policy."""

from __future__ import annotations

import pytest

from alignlab.data import (
    PreferencePair,
    PromptCompletion,
    PromptOnly,
    tokenize_preference,
    tokenize_prompts,
    tokenize_sft,
)
from alignlab.errors import DataError


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def counted_text(tokenizer, feature) -> str:
    ids = [t for t, keep in zip(feature["input_ids"], feature["response_mask"]) if keep]
    return tokenizer.decode(ids)


def test_standard_form_counts_completion_and_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    features, report = tokenize_sft([PromptCompletion("what is 12+30?", " the answer is 42", "f.jsonl", 7)],
                                    tok, max_length=64)
    feature = features[0]
    prompt_ids = tok("what is 12+30?", add_special_tokens=False)["input_ids"]
    completion_ids = tok(" the answer is 42", add_special_tokens=False)["input_ids"]
    assert feature["input_ids"] == prompt_ids + completion_ids + [tok.eos_token_id]
    assert feature["response_mask"] == [False] * len(prompt_ids) + [True] * (len(completion_ids) + 1)
    assert feature["row"] == 7 and report.total == 1 and report.dropped == 0


def test_conversational_counts_only_assistant_content_and_end_marker(tiny_tokenizer):
    tok = tiny_tokenizer
    example = PromptCompletion([{"role": "system", "content": "be kind"}, user("was the film good?")],
                               [assistant("an excellent, moving film")], "f", 1)
    feature = tokenize_sft([example], tok, max_length=128)[0][0]
    full = tok.apply_chat_template(example.prompt + example.completion, tokenize=False)
    assert tok.decode(feature["input_ids"]) == full.rstrip("\n")  # trailing uncounted scaffolding is cut
    assert counted_text(tok, feature) == "an excellent, moving film<|end|>"
    counted = [t for t, keep in zip(feature["input_ids"], feature["response_mask"]) if keep]
    assert counted[-1] == tok.eos_token_id  # the end-of-turn marker counts, so the model learns to stop


def test_multi_turn_counts_every_assistant_turn_only(tiny_tokenizer):
    tok = tiny_tokenizer
    completion = [assistant("the movie was great"), user("and the ending?"), assistant("not good")]
    feature = tokenize_sft([PromptCompletion([user("was it good?")], completion, "f", 1)], tok,
                           max_length=128)[0][0]
    ids, mask = feature["input_ids"], feature["response_mask"]
    runs, current = [], []
    for t, keep in zip(ids, mask):
        if keep:
            current.append(t)
        elif current:
            runs, current = runs + [current], []
    runs += [current] if current else []
    assert [tok.decode(r, skip_special_tokens=True) for r in runs] == ["the movie was great", "not good"]
    assert "and the ending?" in tok.decode([t for t, keep in zip(ids, mask) if not keep])


def test_assistant_turns_in_the_prompt_do_not_count(tiny_tokenizer):
    prompt = [user("hi"), assistant("hello there"), user("was it good?")]
    feature = tokenize_sft([PromptCompletion(prompt, [assistant("yes")], "f", 1)], tiny_tokenizer,
                           max_length=128)[0][0]
    assert counted_text(tiny_tokenizer, feature) == "yes<|end|>"


def test_string_prompt_with_message_completion_is_a_user_turn(tiny_tokenizer):
    feature = tokenize_sft([PromptCompletion("was it good?", [assistant("yes")], "f", 1)], tiny_tokenizer,
                           max_length=128)[0][0]
    assert tiny_tokenizer.decode(feature["input_ids"]).startswith("<|user|>\nwas it good?<|end|>")
    assert counted_text(tiny_tokenizer, feature) == "yes<|end|>"


def test_truncation_keeps_prompt_end_then_cuts_completion(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt, completion = "the movie was great and the acting was wonderful", " the film was terrible"
    n_prompt = len(tok(prompt)["input_ids"])
    n_completion = len(tok(completion)["input_ids"]) + 1
    examples = [PromptCompletion(prompt, completion, "f", 1)]
    features, report = tokenize_sft(examples, tok, max_length=n_prompt + 3, max_prompt_length=n_prompt - 2)
    feature = features[0]
    assert feature["input_ids"][:n_prompt - 2] == tok(prompt)["input_ids"][2:]  # the prompt's end is kept
    assert len(feature["input_ids"]) == n_prompt + 3  # completion cut to the 5 tokens left
    assert sum(feature["response_mask"]) == 5 < n_completion
    assert (report.prompt_truncated, report.completion_truncated, report.dropped) == (1, 1, 0)
    assert "1 prompts truncated, 1 completions truncated, 0 dropped" in report.summary()


def test_examples_without_room_are_dropped_and_counted(tiny_tokenizer):
    long_prompt = "the movie was great and the acting was wonderful " * 3
    examples = [PromptCompletion(long_prompt, " yes", "f", 1), PromptCompletion("hi", " yes", "f", 2)]
    features, report = tokenize_sft(examples, tiny_tokenizer, max_length=10)
    assert [f["row"] for f in features] == [2]
    assert (report.total, report.dropped, report.completion_truncated) == (2, 1, 0)


def test_all_rows_too_long_is_an_error(tiny_tokenizer):
    prompt = "the movie was great and the acting was wonderful"
    examples = [PromptCompletion(prompt, " yes", "train.jsonl", 1)]
    with pytest.raises(DataError, match=r"train\.jsonl: all 1 examples were dropped.*max_length=5"):
        tokenize_sft(examples, tiny_tokenizer, max_length=5)


def test_first_token_never_counts(tiny_tokenizer):
    feature = tokenize_sft([PromptCompletion("", " the film", "f", 1)], tiny_tokenizer, max_length=32)[0][0]
    assert feature["response_mask"][0] is False and all(feature["response_mask"][1:])


def test_preference_features_fit_and_include_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    pair = PreferencePair("the movie was", " great and the acting was wonderful", " bad", source="f", row=4)
    features, report = tokenize_preference([pair], tok, max_length=64)
    feature = features[0]
    assert feature["prompt_ids"] == tok("the movie was", add_special_tokens=False)["input_ids"]
    assert feature["chosen_ids"][-1] == tok.eos_token_id and feature["rejected_ids"][-1] == tok.eos_token_id
    assert tok.decode(feature["rejected_ids"]) == " bad<|end|>" and feature["row"] == 4
    short, report = tokenize_preference([pair], tok, max_length=len(feature["prompt_ids"]) + 4)
    assert len(short[0]["prompt_ids"]) + len(short[0]["chosen_ids"]) == len(feature["prompt_ids"]) + 4
    assert short[0]["rejected_ids"] == feature["rejected_ids"] and report.completion_truncated == 1


def test_conversational_preference_shares_the_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    pair = PreferencePair([user("was it good?")], [assistant("yes, great")], [assistant("no")],
                          source="f", row=1)
    feature = tokenize_preference([pair], tok, max_length=64)[0][0]
    assert tok.decode(feature["prompt_ids"]) == "<|user|>\nwas it good?<|end|>\n<|assistant|>\n"
    assert tok.decode(feature["chosen_ids"]) == "yes, great<|end|>"
    assert all(feature["chosen_mask"]) and all(feature["rejected_mask"])


def test_prompts_for_online_rl(tiny_tokenizer):
    tok = tiny_tokenizer
    examples = [PromptOnly([user("what is 12+30?")], {"answer": "42"}, "f", 1),
                PromptOnly("the movie was great and the acting was wonderful", {}, "f", 2)]
    features, report = tokenize_prompts(examples, tok, max_prompt_length=6)
    assert tok.decode(tokenize_prompts(examples[:1], tok, max_prompt_length=100)[0][0]["prompt_ids"]) == (
        "<|user|>\nwhat is 12+30?<|end|>\n<|assistant|>\n")
    assert all(len(f["prompt_ids"]) == 6 for f in features) and report.prompt_truncated == 2
    assert tok.decode(features[0]["prompt_ids"]).endswith("<|assistant|>\n")  # generation prompt kept
    assert features[0]["extra"] == {"answer": "42"}


SYSTEM_DEFAULT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] != 'system' %}<|system|>\nYou are helpful.<|end|>{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>\n\n{{ m['content'] | trim }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n\n{% endif %}"
)


def test_mask_is_exact_for_another_template_with_bos(tiny_tokenizer):
    """A template with a BOS, an injected system turn, trimmed content and no newline after the marker."""
    import copy

    from tokenizers import processors

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = SYSTEM_DEFAULT_TEMPLATE
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin|> $A", special_tokens=[("<|begin|>", tok.bos_token_id)])
    assert tok("hi")["input_ids"][0] == tok.bos_token_id
    completion = [assistant("the movie was great "), user("and?"), assistant("not good")]
    example = PromptCompletion([user("was it good?")], completion, "f", 1)
    feature = tokenize_sft([example], tok, max_length=128)[0][0]
    assert feature["input_ids"][0] == tok.bos_token_id
    assert counted_text(tok, feature) == "the movie was great<|end|>not good<|end|>"
    # Prompt truncation keeps the BOS in front of the prompt's end.
    n_prompt = feature["response_mask"].index(True)
    cut = tokenize_sft([example], tok, max_length=128, max_prompt_length=5)[0][0]
    assert cut["input_ids"][:5] == [tok.bos_token_id] + feature["input_ids"][n_prompt - 4:n_prompt]
    standard = tokenize_sft([PromptCompletion("hi", " yes", "f", 1)], tok, max_length=16)[0][0]
    assert standard["input_ids"][0] == tok.bos_token_id and standard["response_mask"][:2] == [False, False]
