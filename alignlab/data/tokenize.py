"""Examples -> token ids with `response_mask` (True = the token counts toward the loss).

Standard form (strings): `prompt_ids = BOS (if the tokenizer adds one) + tokens(prompt)`,
`completion_ids = tokens(completion) + [EOS]`; every completion token and the EOS count.

Conversational form (message lists): the conversation is rendered with the tokenizer's chat template
one turn at a time (`messages[:i]` with `add_generation_prompt=True`, then `messages[:i+1]`), so the text
of each assistant turn is known exactly for any template. Each piece is tokenized on its own, so token
boundaries fall exactly on piece boundaries. Only the content of the completion's assistant turns and the
end-of-turn marker that follows each (the template's text up to and including its first special token)
count; system/user turns and role scaffolding do not. A string prompt with a message completion (or the
reverse) is treated as a one-message user prompt (assistant completion).

Truncation policy, applied to every example:
1. if `max_prompt_length` is set, the prompt keeps its last `max_prompt_length` tokens (a leading BOS is
   kept in front of them);
2. if prompt + completion is longer than `max_length`, the completion loses its end;
3. an example left with no counted completion token (its prompt alone fills `max_length`) is dropped and
   counted; set `max_prompt_length` below `max_length` to keep such examples. If every example is
   dropped, DataError.
The first token of a sequence has no context to be predicted from, so it never counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignlab.data.types import Text
from alignlab.errors import DataError


@dataclass
class TruncationReport:
    """How many examples truncation touched."""

    source: str
    max_length: int
    total: int = 0
    prompt_truncated: int = 0
    completion_truncated: int = 0
    dropped: int = 0

    def add(self, *, prompt_cut: bool, completion_cut: bool, dropped: bool) -> None:
        """Count one example; a dropped example counts only as dropped."""
        self.dropped += dropped
        self.prompt_truncated += prompt_cut and not dropped
        self.completion_truncated += completion_cut and not dropped

    def summary(self) -> str:
        """One line for the log."""
        return (f"{self.total} examples from {self.source} (max_length {self.max_length}): "
                f"{self.prompt_truncated} prompts truncated, {self.completion_truncated} completions "
                f"truncated, {self.dropped} dropped (no completion token left)")


class _Encoder:
    """Tokenizes text and chat turns for one tokenizer; remembers its BOS prefix and special ids."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        with_special = tokenizer("a")["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        starts = [i for i in range(len(with_special)) if with_special[i:i + len(plain)] == plain]
        self.bos = list(with_special[:starts[0]]) if starts else []
        added = getattr(tokenizer, "added_tokens_decoder", {})
        self.special = set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` alone (no BOS/EOS added)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def render(self, messages: list, generation_prompt: bool) -> str:
        """The chat template's text for `messages`."""
        if not messages and not generation_prompt:
            return ""
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def reply(self, segment: str, content: str) -> tuple[list[int], list[bool]]:
        """Tokens of one assistant turn's text: content and end-of-turn marker count, scaffolding does not."""
        start = segment.find(content) if content else -1
        if start < 0 and content.strip():
            content = content.strip()
            start = segment.find(content)
        if start < 0:  # the template rewrote the content: count the whole turn
            ids = self.encode(segment)
            return ids, [True] * len(ids)
        head, trailer = self.encode(segment[:start]), self.encode(segment[start + len(content):])
        ids = self.encode(content)
        marker = next((i + 1 for i, t in enumerate(trailer) if t in self.special), 0)
        return head + ids + trailer, [False] * len(head) + [True] * (len(ids) + marker) + [False] * (
            len(trailer) - marker)

    def conversation(self, messages: list, first_counted: int, where: tuple) -> tuple[list[int], list[bool]]:
        """Token ids and mask of a rendered conversation; assistant turns at index >= first_counted count."""
        ids: list[int] = []
        mask: list[bool] = []
        done = ""
        for i, message in enumerate(messages):
            if i < first_counted or message["role"] != "assistant":
                continue
            before, after = self.render(messages[:i], True), self.render(messages[:i + 1], False)
            if not (before.startswith(done) and after.startswith(before)):
                raise DataError("the chat template does not render this conversation turn by turn (a later "
                                "turn changes earlier text), so assistant tokens cannot be located",
                                source=where[0], row=where[1])
            scaffold = self.encode(before[len(done):])
            reply_ids, reply_mask = self.reply(after[len(before):], message["content"])
            ids += scaffold + reply_ids
            mask += [False] * len(scaffold) + reply_mask
            done = after
        full = self.render(messages, False)
        tail = self.encode(full[len(done):]) if full.startswith(done) else []
        return ids + tail, mask + [False] * len(tail)

    def prompt_only(self, prompt: Text) -> list[int]:
        """Prompt ids ready for generation (conversational prompts end with the generation prompt)."""
        if isinstance(prompt, str):
            return self.bos + self.encode(prompt)
        return self.encode(self.render(prompt, True))

    def split(self, prompt: Text, completion: Text, where: tuple) -> tuple[list[int], list[int], list[bool]]:
        """(prompt_ids, completion_ids, completion_mask) before truncation, trailing uncounted tokens cut."""
        if isinstance(prompt, str) and isinstance(completion, str):
            ids = self.encode(completion) + [self.tokenizer.eos_token_id]
            return self.bos + self.encode(prompt), ids, [True] * len(ids)
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}] if prompt else []
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        ids, mask = self.conversation(prompt + completion, len(prompt), where)
        first = mask.index(True) if True in mask else len(mask)
        last = len(mask) - mask[::-1].index(True) if True in mask else len(mask)
        return ids[:first], ids[first:last], mask[first:last]


def _keep_end(prompt: list[int], limit: int | None, bos: list[int]) -> list[int]:
    """The prompt's last `limit` tokens, with a leading BOS kept in front of them."""
    if limit is None or len(prompt) <= limit:
        return prompt
    head = bos if bos and prompt[:len(bos)] == bos else []
    body = prompt[len(head):]
    keep = max(limit - len(head), 0)
    return head[:limit] + body[len(body) - keep:]


def _truncate(prompt: list[int], completions: list[list[int]], *, max_length: int,
              max_prompt_length: int | None, bos: list[int]) -> tuple:
    """The module's truncation policy for one prompt and its completion(s):
    returns (prompt, completions, prompt_cut, completion_cut)."""
    kept = _keep_end(prompt, max_prompt_length, bos)
    room = max(max_length - len(kept), 0)
    cut = any(len(c) > room for c in completions)
    return kept, [c[:room] for c in completions], len(kept) < len(prompt), cut


def _source(examples: list) -> str:
    sources = sorted({getattr(e, "source", "") or "<examples>" for e in examples})
    return ", ".join(sources[:3]) + (f" (+{len(sources) - 3} more)" if len(sources) > 3 else "")


def _check_kept(features: list, report: TruncationReport) -> None:
    if report.total and not features:
        raise DataError(f"all {report.total} examples were dropped: no completion token fits in "
                        f"max_length={report.max_length} after the prompt; raise --data.max_length or set "
                        "--data.max_prompt_length", source=report.source)


def tokenize_sft(examples: list, tokenizer, *, max_length: int,
                 max_prompt_length: int | None = None) -> tuple[list[dict], TruncationReport]:
    """PromptCompletion examples -> features {input_ids, response_mask, row} and a TruncationReport."""
    enc = _Encoder(tokenizer)
    report = TruncationReport(_source(examples), max_length, total=len(examples))
    features = []
    for ex in examples:
        prompt, completion, mask = enc.split(ex.prompt, ex.completion, (ex.source, ex.row))
        prompt, (completion,), prompt_cut, completion_cut = _truncate(
            prompt, [completion], max_length=max_length, max_prompt_length=max_prompt_length, bos=enc.bos)
        response_mask = [False] * len(prompt) + mask[:len(completion)]
        response_mask[:1] = [False] * min(1, len(response_mask))
        dropped = not any(response_mask)
        report.add(prompt_cut=prompt_cut, completion_cut=completion_cut, dropped=dropped)
        if dropped:
            continue
        features.append({"input_ids": prompt + completion, "response_mask": response_mask, "row": ex.row})
    _check_kept(features, report)
    return features, report


def tokenize_preference(pairs: list, tokenizer, *, max_length: int,
                        max_prompt_length: int | None = None) -> tuple[list[dict], TruncationReport]:
    """PreferencePair examples -> features {prompt_ids, chosen_ids, rejected_ids, chosen_mask,
    rejected_mask, row}; prompt + the longer completion fits in `max_length`."""
    enc = _Encoder(tokenizer)
    report = TruncationReport(_source(pairs), max_length, total=len(pairs))
    features = []
    for ex in pairs:
        where = (ex.source, ex.row)
        prompt, chosen, chosen_mask = enc.split(ex.prompt, ex.chosen, where)
        prompt_r, rejected, rejected_mask = enc.split(ex.prompt, ex.rejected, where)
        if prompt_r != prompt:
            raise DataError("chosen and rejected render different prompt tokens with this chat template",
                            source=ex.source, row=ex.row)
        prompt, (chosen, rejected), prompt_cut, completion_cut = _truncate(
            prompt, [chosen, rejected], max_length=max_length, max_prompt_length=max_prompt_length,
            bos=enc.bos)
        chosen_mask, rejected_mask = chosen_mask[:len(chosen)], rejected_mask[:len(rejected)]
        dropped = not (any(chosen_mask) and any(rejected_mask))
        report.add(prompt_cut=prompt_cut, completion_cut=completion_cut, dropped=dropped)
        if dropped:
            continue
        features.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected,
                         "chosen_mask": chosen_mask, "rejected_mask": rejected_mask, "row": ex.row})
    _check_kept(features, report)
    return features, report


def tokenize_prompts(examples: list, tokenizer, *,
                     max_prompt_length: int) -> tuple[list[dict], TruncationReport]:
    """Prompts for online RL -> features {prompt_ids, row, extra}; conversational prompts end with the
    template's generation prompt. Long prompts keep their end."""
    enc = _Encoder(tokenizer)
    report = TruncationReport(_source(examples), max_prompt_length, total=len(examples))
    features = []
    for ex in examples:
        ids = enc.prompt_only(ex.prompt)
        kept = _keep_end(ids, max_prompt_length, enc.bos)
        report.prompt_truncated += len(kept) < len(ids)
        features.append({"prompt_ids": kept, "row": ex.row, "extra": getattr(ex, "extra", {})})
    return features, report
