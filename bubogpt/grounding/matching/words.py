"""Word handling shared by both matchers: words of a label, plural guesses, lookup keys.

Lookup keys squash hyphens and spaces ("t-shirt" = "t shirt") and singularise the head word, so a
label and a mention meet when any of their forms agree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


# A word: letters/digits, hyphenated compounds kept whole ("black-and-white", "t-shirt").
# Apostrophes end a word, so "swan's" yields "swan" and the possessive never widens a span.
WORD_RE = re.compile(r"[^\W_]+(?:-[^\W_]+)*")
ARTICLES = frozenset({"a", "an", "the"})

# Plurals that suffix rules cannot undo. Values are singular lemmas.
IRREGULAR_PLURALS = {
    "people": "person",
    "persons": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "lice": "louse",
    "geese": "goose",
    "feet": "foot",
    "teeth": "tooth",
    "oxen": "ox",
    "dice": "die",
    "cacti": "cactus",
    "fungi": "fungus",
    "cattle": "cow",
}


def singular_forms(word: str) -> set[str]:
    """The word plus every singular it could be the plural of.

    Deliberately over-generates ("houses" -> house, hous): a form only matters when it equals a
    form of an entity, so a wrong guess is harmless while a missed one loses a match.
    """
    forms = {word}
    if word in IRREGULAR_PLURALS:
        forms.add(IRREGULAR_PLURALS[word])
    if len(word) > 3 and word.endswith("men"):  # firemen, policemen, women
        forms.add(word[:-3] + "man")
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        forms.add(word[:-1])  # swans, houses
        if word.endswith("es"):
            forms.add(word[:-2])  # boxes, benches, glasses
        if word.endswith("ies") and len(word) > 4:
            forms.add(word[:-3] + "y")  # puppies
        if word.endswith("ves"):
            forms.add(word[:-3] + "f")  # leaves, wolves
            forms.add(word[:-3] + "fe")  # knives
    return forms


def squash(word: str) -> str:
    # Hyphens and spaces are spelling variants: "t-shirt" = "t shirt", "sun glasses" = "sunglasses".
    return word.replace("-", "")


def phrase_forms(words: Sequence[str]) -> set[str]:
    """Lookup keys of a phrase (lower-case words): modifiers as written, the head singularised."""
    prefix = "".join(squash(w) for w in words[:-1])
    return {prefix + squash(form) for form in singular_forms(words[-1])}


def label_words(label: str) -> list[str]:
    """Lower-case words of a label, leading articles dropped ("The Swan!" -> ["swan"])."""
    words = WORD_RE.findall(label.lower())
    while words and words[0] in ARTICLES:
        words = words[1:]
    return words


def normalize_label(label: str) -> str:
    """Case, punctuation and articles removed: ``" The  Traffic-Light. "`` -> ``"traffic-light"``."""
    return " ".join(label_words(label))
