"""Recognize the common public dataset schemas and normalize rows to the example types in `types.py`.

`detect_schema(row)` names the schema from the first row's columns; `normalize(rows, kind)` parses every
row with that schema's parser into a *record* (our field names: prompt, completion, chosen, ...) and turns
the record into the examples `kind` asks for. Nothing has to be converted by hand first:

| schema               | columns                                               |
|----------------------|-------------------------------------------------------|
| prompt-completion    | prompt, completion (strings or message lists)         |
| messages             | messages                                              |
| sharegpt             | conversations: [{from: human/gpt/system, value}]      |
| alpaca               | instruction, input (optional), output                 |
| gsm8k                | question, answer ("... #### 42")                      |
| preference           | prompt, chosen, rejected (TRL standard/conversational)|
| ultrafeedback        | prompt, chosen/rejected message lists with the user turn, score_chosen/rejected |
| preference-implicit  | chosen, rejected sharing a prefix (the prompt)        |
| hh-rlhf              | chosen, rejected "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts |
| kto                  | prompt, completion, label (bool)                      |
| ranked               | prompt, completions, ranks (0 = best) and/or scores   |
| helpsteer            | prompt, response, helpfulness, correctness, ...       |
| stepwise             | prompt, completions (steps), labels (bool per step)   |
| summarize-feedback   | info {post, title, subreddit}, summaries [{text}], choice |
| shp                  | history, human_ref_A, human_ref_B, labels (1 = A preferred), score_A/B |
| prompt               | prompt (anything else is kept as `extra`)             |

`columns` ({our name: dataset column}, from `--data.columns`) renames columns and overrides detection.
Every bad row raises DataError naming the source, the row and the dataset's own column name.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from alignlab.data.io import Row
from alignlab.data.types import (
    AttributeExample,
    Example,
    Message,
    PreferencePair,
    PromptCompletion,
    PromptOnly,
    RankedList,
    StepLabeled,
    Text,
    UnpairedExample,
)
from alignlab.errors import DataError

KINDS = ("sft", "preference", "unpaired", "ranked", "attributes", "steps", "prompt")
FIELDS = ("prompt", "completion", "chosen", "rejected", "label", "completions", "ranks", "scores",
          "score_chosen", "score_rejected", "margin", "messages", "labels")
ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "system": "system"}
HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
SUPPORTED = ("prompt/completion; messages; conversations (ShareGPT); instruction/input/output (Alpaca); "
             "question/answer (GSM8K); prompt/chosen/rejected; chosen/rejected (implicit prompt or HH-RLHF "
             "transcripts); prompt/completion/label (KTO); prompt/completions/ranks or scores; "
             "prompt/response/helpfulness/... (HelpSteer2); prompt/completions/labels (stepwise); "
             "info/summaries/choice (summarize-from-feedback); history/human_ref_A/human_ref_B/labels (SHP); "
             "prompt alone (online RL)")
NEEDS = {"sft": "completion", "preference": "chosen/rejected pair", "unpaired": "labelled completion",
         "ranked": "list of completions", "attributes": "attribute scores (helpfulness, correctness, ...)",
         "steps": "list of steps labelled true/false"}


class Where(NamedTuple):
    """Where a row came from; `names` maps our field names to the dataset's (for error messages)."""

    source: str
    row: int
    names: dict[str, str]

    def fail(self, field: str, message: str) -> DataError:
        """A DataError for `field`, named as the dataset names it."""
        return DataError(message, source=self.source, row=self.row, field=self.names.get(field, field))


# ---------------------------------------------------------------- detection


def detect_schema(row: dict) -> str:
    """Name the schema of a dataset from one row's columns; raise DataError if none matches."""
    keys = set(row)
    if {"info", "summaries", "choice"} <= keys:
        return "summarize-feedback"
    if {"history", "human_ref_A", "human_ref_B"} <= keys:
        return "shp"
    if "completions" in keys and keys & {"ranks", "scores"}:
        return "ranked"
    if {"prompt", "completions", "labels"} <= keys:
        return "stepwise"
    if {"prompt", "completion", "label"} <= keys:
        return "kto"
    if {"prompt", "response"} <= keys and keys & set(ATTRIBUTES):
        return "helpsteer"
    if {"chosen", "rejected"} <= keys:
        if "prompt" in keys:
            scored_messages = isinstance(row["chosen"], list) and "score_chosen" in keys
            return "ultrafeedback" if scored_messages else "preference"
        chosen = row["chosen"]
        if isinstance(chosen, str) and "\n\nHuman:" in chosen and "\n\nAssistant:" in chosen:
            return "hh-rlhf"
        return "preference-implicit"
    for key, schema in (("conversations", "sharegpt"), ("messages", "messages")):
        if key in keys:
            return schema
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"question", "answer"} <= keys:
        return "gsm8k"
    if {"prompt", "completion"} <= keys:
        return "prompt-completion"
    if "prompt" in keys:
        return "prompt"
    found = ", ".join(map(str, row)) or "none"
    raise DataError(f"cannot tell the dataset's schema from its columns ({found}). "
                    f"Supported schemas, by columns: {SUPPORTED}. If your columns have other names, map "
                    "them with --data.columns, e.g. --data.columns prompt question completion answer")


# ---------------------------------------------------------------- field checks


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _get(data: dict, key: str, where: Where) -> Any:
    if data.get(key) is None:
        raise where.fail(key, f"missing or null (columns found: {', '.join(map(str, data))})")
    return data[key]


def _message(value: Any, field: str, where: Where) -> Message:
    if not (isinstance(value, dict) and isinstance(value.get("role"), str)
            and isinstance(value.get("content"), str)):
        raise where.fail(field, f"expected a message {{'role': str, 'content': str}}, got {_show(value)}")
    return {"role": value["role"], "content": value["content"]}


def _text(value: Any, field: str, where: Where, *, completion: bool = True) -> Text:
    """A string or a list of {role, content} messages; a completion must hold some assistant text."""
    if isinstance(value, str):
        if completion and not value.strip():
            raise where.fail(field, "is empty; expected a non-empty completion")
        return value
    if isinstance(value, list):
        messages = [_message(m, f"{field}[{i}]", where) for i, m in enumerate(value)]
        if completion and not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise where.fail(field, "has no non-empty assistant message; expected the model's reply")
        return messages
    raise where.fail(field, "expected a string or a list of {'role', 'content'} messages, "
                     f"got {_show(value)}")


def _number(data: dict, key: str, where: Where) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise where.fail(key, f"expected a number, got {_show(value)}")
    return float(value)


def _rest(data: dict, *used: str) -> dict:
    return {k: v for k, v in data.items() if k not in used}


def _split_conversation(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    """Prompt = the turns before the first assistant turn; completion = the rest (every reply counts)."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:first], messages[first:]


def _shared_messages(a: list[Message], b: list[Message]) -> int:
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
        n += 1
    return n


def _shared_text(a: str, b: str) -> int:
    """Length of the shared prefix of `a` and `b`, cut after its last whitespace so no word is split."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return max(a.rfind(c, 0, n) for c in " \n\t") + 1


# ---------------------------------------------------------------- parsers: row -> record


def _parse_prompt(data: dict, where: Where) -> dict:
    return {"prompt": _text(_get(data, "prompt", where), "prompt", where, completion=False),
            "extra": _rest(data, "prompt")}


def _parse_completion(data: dict, where: Where) -> dict:
    completion = _text(_get(data, "completion", where), "completion", where)
    return {**_parse_prompt(data, where), "completion": completion,
            "extra": _rest(data, "prompt", "completion")}


def _parse_conversation(data: dict, where: Where, key: str = "messages") -> dict:
    messages = _text(_get(data, key, where), key, where)
    prompt, completion = _split_conversation(messages)
    return {"prompt": prompt, "completion": completion, "extra": _rest(data, key)}


def _parse_sharegpt(data: dict, where: Where) -> dict:
    turns = _get(data, "conversations", where)
    if not isinstance(turns, list):
        raise where.fail("conversations", f"expected a list of {{'from', 'value'}} turns, got {_show(turns)}")
    messages = []
    for i, turn in enumerate(turns):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker not in SHAREGPT_ROLES or not isinstance(turn.get("value"), str):
            raise where.fail(f"conversations[{i}]", "expected {'from': human/gpt/system, 'value': str}, "
                             f"got {_show(turn)}")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": turn["value"]})
    return _parse_conversation({**data, "conversations": messages}, where, "conversations")


def _parse_alpaca(data: dict, where: Where) -> dict:
    instruction = _text(_get(data, "instruction", where), "instruction", where)
    extra_input = data.get("input") or ""
    if not isinstance(extra_input, str):
        raise where.fail("input", f"expected a string, got {_show(extra_input)}")
    if not isinstance(instruction, str):
        raise where.fail("instruction", f"expected a string, got {_show(instruction)}")
    prompt = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
    return {"prompt": prompt, "completion": _text(_get(data, "output", where), "output", where),
            "extra": _rest(data, "instruction", "input", "output")}


def _parse_gsm8k(data: dict, where: Where) -> dict:
    question = _text(_get(data, "question", where), "question", where)
    answer = _get(data, "answer", where)
    if not isinstance(answer, str) or not answer.strip():
        raise where.fail("answer", f"expected a non-empty string, got {_show(answer)}")
    final = answer.rsplit("####", 1)[-1].strip()
    extra = {"solution": answer, **_rest(data, "question", "answer"), "answer": final}
    return {"prompt": question, "completion": answer, "extra": extra}


def _parse_helpsteer(data: dict, where: Where) -> dict:
    prompt = _text(_get(data, "prompt", where), "prompt", where, completion=False)
    response = _text(_get(data, "response", where), "response", where)
    scores = {key: _number(data, key, where) for key in ATTRIBUTES if data.get(key) is not None}
    return {"prompt": prompt, "completion": response, "attributes": scores,
            "extra": _rest(data, "prompt", "response", *ATTRIBUTES)}


def _parse_kto(data: dict, where: Where) -> dict:
    label = _get(data, "label", where)
    if not isinstance(label, bool):
        raise where.fail("label", f"expected true (desirable) or false (undesirable), got {_show(label)}")
    return {**_parse_completion(data, where), "label": label,
            "extra": _rest(data, "prompt", "completion", "label")}


def _pair(prompt: Text, chosen: Text, rejected: Text, data: dict, where: Where, *used: str) -> dict:
    """A preference record; re-checks chosen/rejected, which may have lost their shared prefix."""
    numbers = ("score_chosen", "score_rejected", "margin")
    return {"prompt": prompt, "chosen": _text(chosen, "chosen", where),
            "rejected": _text(rejected, "rejected", where),
            **{key: _number(data, key, where) for key in numbers},
            "extra": _rest(data, "prompt", "chosen", "rejected", *numbers, *used)}


def _parse_preference(data: dict, where: Where) -> dict:
    prompt = _text(_get(data, "prompt", where), "prompt", where, completion=False)
    chosen = _text(_get(data, "chosen", where), "chosen", where)
    rejected = _text(_get(data, "rejected", where), "rejected", where)
    if isinstance(chosen, list) and isinstance(rejected, list):
        if isinstance(prompt, str):
            # UltraFeedback: chosen/rejected repeat the user turn; the shared leading turns are the prompt.
            shared = _shared_messages(chosen, rejected)
            prompt = chosen[:shared] if shared else ([{"role": "user", "content": prompt}] if prompt else [])
    if isinstance(prompt, list) and prompt:
        # A completion that repeats the prompt's turns keeps only what follows them.
        n = len(prompt)
        chosen = chosen[n:] if isinstance(chosen, list) and chosen[:n] == prompt else chosen
        rejected = rejected[n:] if isinstance(rejected, list) and rejected[:n] == prompt else rejected
    return _pair(prompt, chosen, rejected, data, where)


def _parse_implicit(data: dict, where: Where) -> dict:
    chosen = _text(_get(data, "chosen", where), "chosen", where)
    rejected = _text(_get(data, "rejected", where), "rejected", where)
    if type(chosen) is not type(rejected):
        raise where.fail("rejected", "expected the same form as 'chosen' (both strings or both messages)")
    cut = _shared_text(chosen, rejected) if isinstance(chosen, str) else _shared_messages(chosen, rejected)
    return _pair(chosen[:cut], chosen[cut:], rejected[cut:], data, where)


def _hh_messages(value: Any, field: str, where: Where) -> list[Message]:
    parts = HH_TURN.split(value) if isinstance(value, str) else []
    if len(parts) < 3 or parts[0].strip() or parts[-2] != "Assistant":
        raise where.fail(field, "expected an HH-RLHF transcript '\\n\\nHuman: ...\\n\\nAssistant: ...' "
                         f"ending with an Assistant turn, got {_show(value)}")
    return [{"role": "user" if role == "Human" else "assistant", "content": content.strip()}
            for role, content in zip(parts[1::2], parts[2::2])]


def _parse_hh(data: dict, where: Where) -> dict:
    chosen = _hh_messages(_get(data, "chosen", where), "chosen", where)
    rejected = _hh_messages(_get(data, "rejected", where), "rejected", where)
    return _pair(chosen[:-1], chosen[-1:], rejected[-1:], data, where)


def _parse_ranked(data: dict, where: Where) -> dict:
    prompt = _text(_get(data, "prompt", where), "prompt", where, completion=False)
    items = _get(data, "completions", where)
    if not isinstance(items, list) or len(items) < 2:
        raise where.fail("completions", f"expected a list of at least 2 completions, got {_show(items)}")
    completions = [_text(c, f"completions[{i}]", where) for i, c in enumerate(items)]
    lists = {}
    for key, types in (("ranks", int), ("scores", int | float)):
        value = data.get(key)
        if value is None:
            continue
        if (not isinstance(value, list) or len(value) != len(items)
                or any(isinstance(v, bool) or not isinstance(v, types) for v in value)):
            raise where.fail(key, f"expected a list of {len(items)} numbers (one per completion), "
                             f"got {_show(value)}")
        lists[key] = list(value)
    if not lists:
        raise where.fail("ranks", "missing; expected 'ranks' (0 = best) or 'scores' (higher = better)")
    return {"prompt": prompt, "completions": completions, "ranks": lists.get("ranks"),
            "scores": [float(s) for s in lists["scores"]] if "scores" in lists else None,
            "extra": _rest(data, "prompt", "completions", "ranks", "scores")}


def _parse_stepwise(data: dict, where: Where) -> dict:
    prompt, steps, labels = (_get(data, key, where) for key in ("prompt", "completions", "labels"))
    if not isinstance(prompt, str):
        raise where.fail("prompt", f"expected a string (step rows are plain text), got {_show(prompt)}")
    if not isinstance(steps, list) or not steps:
        raise where.fail("completions", f"expected a non-empty list of steps, got {_show(steps)}")
    for i, step in enumerate(steps):
        if not isinstance(step, str) or not step.strip():
            raise where.fail(f"completions[{i}]", f"expected a non-empty step string, got {_show(step)}")
    if not isinstance(labels, list) or len(labels) != len(steps) or not all(isinstance(b, bool) for b in labels):
        raise where.fail("labels", f"expected a list of {len(steps)} true/false (one per step), got {_show(labels)}")
    return {"prompt": prompt, "steps": steps, "labels": labels, "extra": _rest(data, "prompt", "completions", "labels")}


def _parse_summarize(data: dict, where: Where) -> dict:
    info, summaries, choice = (_get(data, key, where) for key in ("info", "summaries", "choice"))
    post = info.get("post") or info.get("article") if isinstance(info, dict) else None
    if not isinstance(post, str) or not post.strip():
        raise where.fail("info.post", f"expected the post text in info['post'], got {_show(info)}")
    if choice not in (0, 1) or isinstance(choice, bool):
        raise where.fail("choice", f"expected 0 or 1 (index of the preferred summary), got {_show(choice)}")
    pair = isinstance(summaries, list) and len(summaries) == 2
    if not (pair and all(isinstance(s, dict) for s in summaries)):
        raise where.fail("summaries", f"expected two {{'text': str}} summaries, got {_show(summaries)}")
    texts = [_text(s.get("text"), f"summaries[{i}].text", where) for i, s in enumerate(summaries)]
    lines = [f"SUBREDDIT: r/{info['subreddit']}" if info.get("subreddit") else "",
             f"TITLE: {info['title']}" if info.get("title") else "", f"POST: {post.strip()}", "TL;DR:"]
    prompt = "\n\n".join(line for line in lines if line)
    return _pair(prompt, texts[choice], texts[1 - choice], data, where, "info", "summaries", "choice")


def _parse_shp(data: dict, where: Where) -> dict:
    history = _text(_get(data, "history", where), "history", where, completion=False)
    label = _get(data, "labels", where)
    if label not in (0, 1) or isinstance(label, bool):
        raise where.fail("labels", f"expected 1 (human_ref_A preferred) or 0 (B), got {_show(label)}")
    a, b = (_text(_get(data, key, where), key, where) for key in ("human_ref_A", "human_ref_B"))
    if label == 1:
        chosen, rejected, key_c, key_r = a, b, "score_A", "score_B"
    else:
        chosen, rejected, key_c, key_r = b, a, "score_B", "score_A"
    scores = {"score_chosen": _number(data, key_c, where), "score_rejected": _number(data, key_r, where)}
    used = ("history", "human_ref_A", "human_ref_B", "labels", "score_A", "score_B")
    return _pair(history, chosen, rejected, {**data, **scores}, where, *used)


PARSERS = {
    "prompt-completion": _parse_completion, "messages": _parse_conversation, "sharegpt": _parse_sharegpt,
    "alpaca": _parse_alpaca, "gsm8k": _parse_gsm8k, "helpsteer": _parse_helpsteer, "kto": _parse_kto,
    "preference": _parse_preference, "ultrafeedback": _parse_preference,
    "preference-implicit": _parse_implicit, "hh-rlhf": _parse_hh, "ranked": _parse_ranked,
    "summarize-feedback": _parse_summarize, "shp": _parse_shp, "prompt": _parse_prompt,
    "stepwise": _parse_stepwise,
}


# ---------------------------------------------------------------- record -> examples


def _best_first(rec: dict) -> list[int]:
    n = len(rec["completions"])
    if rec["ranks"] is not None:
        return sorted(range(n), key=lambda i: rec["ranks"][i])
    return sorted(range(n), key=lambda i: -rec["scores"][i])


def _convert(rec: dict, kind: str, schema: str, where: Where) -> list[Example]:
    """Turn one record into the examples `kind` asks for (a pair asked for as 'unpaired' gives two)."""
    at = {"source": where.source, "row": where.row}
    prompt = rec["prompt"]
    if kind == "prompt":
        return [PromptOnly(prompt, extra=rec["extra"], **at)]
    if "steps" in rec:
        if kind == "steps":
            return [StepLabeled(prompt, rec["steps"], rec["labels"], **at)]
    elif "chosen" in rec:
        chosen, rejected, sc, sr = rec["chosen"], rec["rejected"], rec["score_chosen"], rec["score_rejected"]
        if kind == "sft":
            return [PromptCompletion(prompt, chosen, **at)]
        if kind == "preference":
            return [PreferencePair(prompt, chosen, rejected, sc, sr, rec["margin"], rec["extra"], **at)]
        if kind == "unpaired":
            return [UnpairedExample(prompt, chosen, True, **at),
                    UnpairedExample(prompt, rejected, False, **at)]
        if kind == "ranked":
            scores = [sc, sr] if sc is not None and sr is not None else None
            return [RankedList(prompt, [chosen, rejected], ranks=[0, 1], scores=scores, **at)]
    elif "completions" in rec:
        order = _best_first(rec)
        if kind == "sft":
            return [PromptCompletion(prompt, rec["completions"][order[0]], **at)]
        if kind == "ranked":
            return [RankedList(prompt, rec["completions"], rec["ranks"], rec["scores"], **at)]
        if kind == "preference":
            best, worst = order[0], order[-1]
            scores = (rec["scores"][best], rec["scores"][worst]) if rec["scores"] else (None, None)
            return [PreferencePair(prompt, rec["completions"][best], rec["completions"][worst], *scores,
                                   extra=rec["extra"], **at)]
    elif "completion" in rec:
        label = rec.get("label")
        if kind == "sft":
            return [PromptCompletion(prompt, rec["completion"], **at)] if label is not False else []
        if kind == "unpaired" and label is not None:
            return [UnpairedExample(prompt, rec["completion"], label, **at)]
        if kind == "attributes" and "attributes" in rec:
            return [AttributeExample(prompt, rec["completion"], rec["attributes"], **at)]
    raise DataError(f"a '{schema}' dataset has no {NEEDS[kind]}, so it cannot be read as '{kind}' data",
                    source=where.source)


def _rename(data: dict, names: dict[str, str], where: Where) -> tuple[dict, dict]:
    """Apply --data.columns; returns (all columns renamed, the columns detection should look at)."""
    mapped = {}
    for ours, theirs in names.items():
        if theirs not in data:
            raise DataError(f"column '{theirs}' (given for '{ours}' in --data.columns) not found; columns: "
                            f"{', '.join(map(str, data))}", source=where.source, row=where.row, field=theirs)
        mapped[ours] = data[theirs]
    rest = _rest(data, *names.values())
    return {**rest, **mapped}, {**{k: v for k, v in rest.items() if k in FIELDS}, **mapped}


def normalize(rows: list[Row] | list[dict], kind: str, *,
              columns: dict[str, str] | None = None) -> list[Example]:
    """Parse `rows` (schema detected from the first row, or fixed by `columns`) into `kind` examples."""
    if kind not in KINDS:
        raise DataError(f"unknown data kind '{kind}'; expected one of {', '.join(KINDS)}")
    names = dict(columns or {})
    unknown = [k for k in names if k not in FIELDS]
    if unknown:
        raise DataError(f"--data.columns names unknown field(s) {unknown}; "
                        f"our fields are {', '.join(FIELDS)}")
    rows = [r if isinstance(r, Row) else Row("<rows>", i, r) for i, r in enumerate(rows, start=1)]
    if not rows:
        raise DataError("no rows to normalize")
    schema = None
    examples: list[Example] = []
    for source, number, data in rows:
        where = Where(source, number, names)
        if names:
            data, visible = _rename(data, names, where)
        else:
            visible = data
        if schema is None:
            try:
                schema = detect_schema(visible)
            except DataError as e:
                raise DataError(str(e), source=source, row=number) from None
        examples += _convert(PARSERS[schema](data, where), kind, schema, where)
    if not examples:
        raise DataError(f"no '{kind}' examples in {len(rows)} rows (e.g. every KTO label is false)",
                        source=rows[0].source)
    return examples
