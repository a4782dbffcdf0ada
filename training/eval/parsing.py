"""Parsing the world's language back: the objects a text names, places, sentences.

The patterns follow what `training.world.language` writes: "two red balls", "the dogs are red and
blue", "in the top left".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from training.world.scene import COLORS, OBJECT_KINDS

QUANTITIES = {"no": 0, "zero": 0, "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
              "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
KIND_PATTERN = "|".join(OBJECT_KINDS)
COLOR_PATTERN = "|".join(COLORS)
QUANTITY_PATTERN = "|".join(QUANTITIES) + r"|\d+"
_NP = re.compile(
    rf"\b(?:(?P<q>{QUANTITY_PATTERN})\s+)?(?:(?P<size>small|large|big|tiny|medium-sized|medium)\s+)?"
    rf"(?:(?P<color>{COLOR_PATTERN})\s+)?(?P<kind>{KIND_PATTERN})(?P<plural>s)?\b"
)
_COLOR_LIST = rf"(?P<colors>(?:{COLOR_PATTERN})(?:(?:\s*,\s*|\s+and\s+|\s*,\s*and\s+)(?:{COLOR_PATTERN}))*)"
_PREDICATE = re.compile(
    rf"\b(?:the|both|all)\s+(?:(?:{QUANTITY_PATTERN})\s+)?(?P<kind>{KIND_PATTERN})s?\s+(?:is|are)\s+(?:both\s+|all\s+)?{_COLOR_LIST}\b"
)
_POSITION = re.compile(r"\b(?:in|at|on) the (?:(?P<v>top|middle|bottom) )?(?P<w>left|right|center|centre|top|bottom|middle)\b")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Mention:
    kind: str
    count: int | None = None  # None: no number said ("the dog")
    color: str | None = None
    negated: bool = False  # "no dogs"
    predicate: bool = False  # from "the dogs are red and blue"


def parse_quantity(word: str | None) -> int | None:
    if word is None or word in ("the",):
        return None
    return int(word) if word.isdigit() else QUANTITIES.get(word)


def parse_mentions(text: str) -> list[Mention]:
    """Objects a text names, with the number, color and negation said with them."""
    low = text.lower()
    mentions = []
    for m in _NP.finditer(low):
        count = parse_quantity(m.group("q"))
        mentions.append(Mention(m.group("kind"), count, m.group("color"), negated=count == 0))
    for m in _PREDICATE.finditer(low):
        for color in re.findall(COLOR_PATTERN, m.group("colors")):
            mentions.append(Mention(m.group("kind"), None, color, predicate=True))
    return mentions


def parse_position(text: str) -> tuple[str, str] | None:
    """The first place phrase: "in the top left" -> ("left", "top"); "on the left" -> ("left", "middle")."""
    m = _POSITION.search(text.lower())
    if m is None:
        return None
    vertical, word = m.group("v"), m.group("w")
    word = "center" if word == "centre" else word
    if vertical is not None:
        return ("center" if word in ("center", "middle") else word), vertical
    if word in ("left", "right"):
        return word, "middle"
    if word in ("top", "bottom"):
        return "center", word
    return "center", "middle"


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE.split(text.strip()) if s]


def split_pair_answer(text: str) -> tuple[str, str]:
    """(image part, audio part) of an image + audio answer: sentences about the audio or sound go to the second."""
    image, audio = [], []
    for s in sentences(text):
        (audio if re.search(r"\b(?:audio|sound|hear|heard)\b", s.lower()) else image).append(s)
    return " ".join(image), " ".join(audio)
