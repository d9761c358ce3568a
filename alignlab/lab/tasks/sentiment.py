"""Synthetic movie reviews with a programmatic *gold* sentiment reward.

Reviews come from a small seeded grammar: an opening ("this movie was", "i watched the film and"), a
polar continuation built from a lexicon of adjectives, verbs and nouns, optional intensifiers
("very", "truly", "extremely") and negations ("not", "never", "hardly"), then one to three more
sentences mixing polar remarks and neutral filler about plot, acting, the director...

`gold_reward` scores ANY text (model samples included), so the lab can measure how much an aligned
policy really improved, independent of the proxy reward model it was trained against.
"""

from __future__ import annotations

import math
import random
import re

_ADJ_POS = {
    "good": 1.0, "great": 1.5, "wonderful": 1.5, "excellent": 2.0, "brilliant": 2.0, "amazing": 2.0,
    "superb": 2.0, "delightful": 1.5, "beautiful": 1.5, "moving": 1.0, "charming": 1.0, "enjoyable": 1.0,
    "lovely": 1.0, "clever": 1.0, "fantastic": 2.0, "funny": 1.0, "gripping": 1.5,
}
_ADJ_NEG = {
    "bad": -1.0, "poor": -1.0, "terrible": -2.0, "awful": -2.0, "horrible": -2.0, "boring": -1.5,
    "dull": -1.5, "weak": -1.0, "painful": -1.5, "disappointing": -1.5, "mediocre": -1.0,
    "tedious": -1.5, "bland": -1.0, "clumsy": -1.0, "dreadful": -2.0, "messy": -1.0, "silly": -1.0,
    "predictable": -1.0,
}
_VERB_POS = {"loved": 2.0, "enjoyed": 1.5, "liked": 1.0, "adored": 2.0, "admired": 1.0}
_VERB_NEG = {"hated": -2.0, "disliked": -1.5, "regretted": -1.5, "despised": -2.0}
_NOUN_POS = {"masterpiece": 2.0, "gem": 1.5, "triumph": 2.0, "delight": 1.5, "treat": 1.0, "joy": 1.5}
_NOUN_NEG = {"mess": -1.5, "disaster": -2.0, "failure": -2.0, "waste": -1.5, "bore": -1.5, "letdown": -1.5}
# Words the grammar never writes but a model (or a person) might.
_EXTRA = {"fun": 1.0, "love": 2.0, "enjoy": 1.5, "recommend": 1.5, "hate": -2.0, "wasted": -1.5}

POSITIVE = {**_ADJ_POS, **_VERB_POS, **_NOUN_POS, **{w: v for w, v in _EXTRA.items() if v > 0}}
NEGATIVE = {**_ADJ_NEG, **_VERB_NEG, **_NOUN_NEG, **{w: v for w, v in _EXTRA.items() if v < 0}}
LEXICON = {**POSITIVE, **NEGATIVE}
INTENSIFIERS = {"very": 1.5, "really": 1.5, "so": 1.5, "truly": 1.75, "extremely": 2.0, "incredibly": 2.0}
NEGATIONS = {"not", "never", "hardly", "no", "barely"}
NEGATION_WINDOW = 3
"""A negation flips polarity words among the next this-many word tokens (stopping at punctuation)."""
INTENSIFIER_WINDOW = 2
"""An intensifier scales the first polarity word among the next this-many word tokens."""
SCALE = 0.6
"""k in gold = sigmoid(k * sum); one plain adjective (weight 1) gives about 0.65."""

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[.,;:!?]")

_INTENS = ["very", "really", "so", "truly", "extremely", "incredibly"]
_NEGS = ["not", "never", "hardly"]
_ASPECTS = ["plot", "acting", "ending", "story", "script", "music", "cast", "dialogue", "pacing",
            "soundtrack", "cinematography", "humor", "lead actor", "final scene", "first half"]
_OPENINGS_ADJ = ["this movie was", "the film was", "the acting was", "the plot was", "the ending was",
                 "overall the movie was", "honestly this film was", "i think this film is",
                 "the story was", "this film is", "the whole thing was", "the new movie was"]
_OPENINGS_CLAUSE = ["i watched the film and", "i saw this movie and", "we went to see it and",
                    "i watched it last night and", "after the first hour"]
_OPENINGS_VERB = ["my friends and i", "honestly i", "i have to say i", "my family and i"]
_FILLER = [
    "the story follows a young detective in a small town.", "the film runs about two hours.",
    "i saw it with my friends on friday.", "the director also wrote the script.",
    "it is based on a novel from the seventies.", "most of it was shot in the city.",
    "the lead actor plays a retired teacher.", "there is a long scene at a wedding.",
    "the music is by a composer i did not know.", "it opens in theaters next week.",
    "the cast includes a few famous faces.", "the plot centers on two brothers.",
]


def _sigmoid(x: float) -> float:
    # exp of a negative argument only: repeated intensifiers make S grow geometrically, and exp(-x) overflows
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens (keeping apostrophes, e.g. "didn't") and punctuation marks."""
    return _TOKEN.findall(text.lower())


def polarity_sum(text: str) -> float:
    """The raw sentiment sum S of `text` (see `gold_reward`)."""
    total, scale, scale_left, negate_left = 0.0, 1.0, 0, 0
    for tok in tokenize(text):
        if not tok[0].isalpha():  # punctuation ends every pending negation and intensifier
            scale, scale_left, negate_left = 1.0, 0, 0
            continue
        if tok in NEGATIONS or tok.endswith("n't"):
            negate_left = NEGATION_WINDOW
            continue
        if tok in INTENSIFIERS:
            scale, scale_left = scale * INTENSIFIERS[tok], INTENSIFIER_WINDOW
            continue
        weight = LEXICON.get(tok, 0.0)
        if weight:
            total += weight * (scale if scale_left > 0 else 1.0) * (-1.0 if negate_left > 0 else 1.0)
            scale, scale_left = 1.0, 0
        else:
            scale_left = max(scale_left - 1, 0)
        negate_left = max(negate_left - 1, 0)
    return total


def gold_reward(texts: list[str]) -> list[float]:
    """Gold sentiment score in [0, 1] of each text: gold = sigmoid(SCALE * S).

    S = sum over polarity words w of  lexicon[w] * m_w * n_w, where the text is lowercased and split
    into word and punctuation tokens; m_w is the product of the intensifier factors (very 1.5 ...
    extremely 2) seen within INTENSIFIER_WINDOW words before w (each intensifier run scales only the next
    polarity word), and n_w = -1 if a negation (not, never, hardly, no, barely, or any "...n't") occurs
    within NEGATION_WINDOW words before w, else +1. Punctuation resets both. A text with no polarity
    word scores exactly 0.5.
    """
    return [_sigmoid(SCALE * polarity_sum(t)) for t in texts]


def gold_reward_tensor(texts: list[str]):
    """`gold_reward` as a float32 tensor `(B,)`, for reward functions that return tensors."""
    import torch

    return torch.tensor(gold_reward(texts), dtype=torch.float32)


# ---------------------------------------------------------------- the grammar


def _adj_phrase(rng: random.Random, positive: bool) -> str:
    """A polar adjective phrase: "very good", "not boring" (negated opposite), "good"."""
    if rng.random() < 0.2:  # say it by negating the opposite: "never boring", "not very good"
        adj = rng.choice(list(_ADJ_NEG if positive else _ADJ_POS))
        return f"{rng.choice(_NEGS)} {adj}"
    adj = rng.choice(list(_ADJ_POS if positive else _ADJ_NEG))
    return f"{rng.choice(_INTENS)} {adj}" if rng.random() < 0.4 else adj


def _polar_sentence(rng: random.Random, positive: bool) -> str:
    """One full sentence with the given polarity."""
    kind = rng.randrange(5)
    aspect = rng.choice(_ASPECTS)
    if kind == 0:
        return f"the {aspect} was {_adj_phrase(rng, positive)}."
    if kind == 1:
        return f"i {rng.choice(list(_VERB_POS if positive else _VERB_NEG))} the {aspect}."
    if kind == 2:
        return f"it is a {rng.choice(list(_NOUN_POS if positive else _NOUN_NEG))}."
    if kind == 3:
        return f"the {aspect} was {_adj_phrase(rng, positive)} and the {rng.choice(_ASPECTS)} was " \
               f"{_adj_phrase(rng, positive)}."
    return f"what a {rng.choice(list(_ADJ_POS if positive else _ADJ_NEG))} {rng.choice(['film', 'movie'])}!"


def _continuation(rng: random.Random, opening: str, positive: bool) -> str:
    """The words that complete `opening` into its first sentence."""
    if opening in _OPENINGS_ADJ:
        return f"{_adj_phrase(rng, positive)}."
    if opening in _OPENINGS_VERB:
        return f"{rng.choice(list(_VERB_POS if positive else _VERB_NEG))} it."
    if rng.random() < 0.5:
        return f"it was {_adj_phrase(rng, positive)}."
    return f"i {rng.choice(list(_VERB_POS if positive else _VERB_NEG))} it."


def all_openings() -> list[str]:
    """Every review opening the grammar uses (the lab's sentiment prompts)."""
    return _OPENINGS_ADJ + _OPENINGS_CLAUSE + _OPENINGS_VERB


def review_parts(rng: random.Random, positive: bool) -> tuple[str, str]:
    """One review as (opening, rest); the full review is `opening + " " + rest`."""
    opening = rng.choice(all_openings())
    sentences = [_continuation(rng, opening, positive)]
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.35:
            sentences.append(rng.choice(_FILLER))
        else:  # a main-polarity remark, sometimes a contrary one ("but ...") so reviews are mixed
            contrary = rng.random() < 0.2
            sentence = _polar_sentence(rng, positive != contrary)
            sentences.append(f"but {sentence}" if contrary else sentence)
    return opening, " ".join(sentences)


def reviews(n: int, *, seed: int, positive_share: float = 0.5) -> list[str]:
    """`n` seeded reviews; each is positive with probability `positive_share`, else negative."""
    return [prompt + completion for prompt, completion in review_pairs(n, seed=seed,
                                                                       positive_share=positive_share)]


def review_pairs(n: int, *, seed: int, positive_share: float = 0.5) -> list[tuple[str, str]]:
    """`n` seeded reviews split as (prompt, completion): the opening and " " + the rest."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        opening, rest = review_parts(rng, rng.random() < positive_share)
        out.append((opening, " " + rest))
    return out


def prompts(n: int, *, seed: int) -> list[str]:
    """`n` seeded review openings (2-6 words, no polarity word), e.g. "this movie was"."""
    rng = random.Random(seed)
    return [rng.choice(all_openings()) for _ in range(n)]
