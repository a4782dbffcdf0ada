"""Scores of image + audio answers: do they say the two are related or unrelated, and does the
sentence naming the sound's source name the right object (kind, colour, place)?"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from training.eval.parsing import parse_mentions, parse_position, sentences
from training.world.scene import SceneObject

_UNRELATED = re.compile(r"\bunrelated\b|\bnot related\b|\bno relation|\bnot come from\b|\bno source\b|\bnot the source\b|\bnot in the (?:image|picture)\b")
_RELATED = re.compile(r"\bcomes? from\b|\b(?:are|is|seem) related\b|\bis the source\b|\bmakes? the sound\b|\bsource of the sound is\b")


def classify_relation(text: str) -> str | None:
    """"unrelated" when the answer says the two do not belong together, "related" when it names a source."""
    low = text.lower()
    if _UNRELATED.search(low):
        return "unrelated"
    if _RELATED.search(low):
        return "related"
    return None


def relation_accuracy(cases: Iterable[tuple[str, bool]]) -> float:
    """Share of (answer, truly related) pairs whose answer says the right thing (no statement = wrong)."""
    cases = list(cases)
    if not cases:
        return float("nan")
    right = sum(classify_relation(answer) == ("related" if truth else "unrelated") for answer, truth in cases)
    return right / len(cases)


@dataclass
class SourceScore:
    related: bool  # the answer says the sound comes from something in the picture
    kind: bool
    color: bool | None  # None: no color said
    position: bool | None  # None: no place said

    @property
    def correct(self) -> bool:
        return self.related and self.kind and self.color is not False and self.position is not False


def score_source_answer(answer: str, source: SceneObject | Mapping[str, Any], width: int | None = None, height: int | None = None) -> SourceScore:
    """Checks the sentence naming the source ("The sound comes from the red dog on the left.")."""
    if isinstance(source, SceneObject):
        if width is None or height is None:
            raise ValueError("score_source_answer needs width and height with a SceneObject")
        kind, color, position = source.kind, source.color, source.position(width, height)
    else:
        kind, color, position = source["kind"], source["color"], tuple(source["position"])
    related = classify_relation(answer) == "related"
    lead = next((s for s in sentences(answer) if _RELATED.search(s.lower())), answer)
    mentions = [m for m in parse_mentions(lead) if not m.negated]
    first = mentions[0] if mentions else None
    where = parse_position(lead)
    return SourceScore(
        related=related,
        kind=first is not None and first.kind == kind,
        color=None if first is None or first.color is None else first.color == color,
        position=None if where is None else tuple(where) == tuple(position),
    )
