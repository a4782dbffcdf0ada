"""Scores of text answers about a sound: its kind and its number of events."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from training.eval.parsing import QUANTITY_PATTERN, parse_quantity
from training.world.sound import Sound

_TIMES = re.compile(rf"\b(?:(?P<word>once|twice)|(?P<n>{QUANTITY_PATTERN}) times)\b")
SOUND_WORDS = {
    "bird": r"\bbirds?\b|\bchirp", "dog": r"\bdogs?\b|\bbark", "cat": r"\bcats?\b|\bmeow", "car": r"\bcars?\b|\bhonk",
    "boat": r"\bboats?\b", "ball": r"\bballs?\b|\bbounc", "bell": r"\bbells?\b|\bring(?:s|ing)?\b",
    "drum": r"\bdrums?\b|\bbeat(?:s|ing)?\b", "wind": r"\bwind\b",
}


@dataclass
class AudioScore:
    kinds: list[str]  # sound kinds the text names
    kind_correct: bool
    count: int | None  # events the text states
    count_correct: bool | None  # None: nothing to check (continuous sound, or no number said)


def parse_sound(text: str) -> tuple[list[str], int | None]:
    low = text.lower()
    kinds = [k for k, pattern in SOUND_WORDS.items() if re.search(pattern, low)]
    if "wind" in kinds and "boat" in kinds:
        kinds.remove("wind")  # "blows its horn"
    count = None
    m = _TIMES.search(low)
    if m is not None:
        count = {"once": 1, "twice": 2}[m.group("word")] if m.group("word") else parse_quantity(m.group("n"))
    return kinds, count


def score_audio(text: str, sound: Sound | Mapping[str, Any]) -> AudioScore:
    """Does a text name the sound's kind (and nothing else), and its number of events?"""
    kind = sound.kind if isinstance(sound, Sound) else sound["kind"]
    truth_count = sound.count if isinstance(sound, Sound) else sound.get("count")
    kinds, count = parse_sound(text)
    count_correct = None if truth_count is None or count is None else count == truth_count
    return AudioScore(kinds, kinds == [kind], count, count_correct)
