"""Scores of text answers about an image: captions and descriptions (`score_text`), and the world's
questions (`score_answer`: what / count / color / where / exists)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from training.eval.parsing import parse_mentions, parse_position
from training.world.scene import Scene


def _objects(scene: Scene | Mapping[str, Any]) -> list[tuple[str, str]]:
    if isinstance(scene, Scene):
        return [(o.kind, o.color) for o in scene.objects]
    return [(o["kind"], o["color"]) for o in scene["objects"]]


@dataclass
class TextScore:
    """How true a caption / description is to its scene."""

    mentioned: list[str]
    present: list[str]
    hallucinated: list[str]  # named (not negated) but absent
    missed: list[str]  # present but never named
    color_errors: list[str] = field(default_factory=list)  # "red dog" when no dog is red
    count_errors: list[str] = field(default_factory=list)  # "two dogs" when there are three
    colors_checked: int = 0
    counts_checked: int = 0

    @property
    def kind_precision(self) -> float:
        return 1.0 if not self.mentioned else 1 - len(self.hallucinated) / len(self.mentioned)

    @property
    def kind_recall(self) -> float:
        return 1.0 if not self.present else 1 - len(self.missed) / len(self.present)

    @property
    def color_accuracy(self) -> float | None:
        return None if not self.colors_checked else 1 - len(self.color_errors) / self.colors_checked

    @property
    def count_accuracy(self) -> float | None:
        return None if not self.counts_checked else 1 - len(self.count_errors) / self.counts_checked

    @property
    def correct(self) -> bool:
        """Nothing false said (nothing invented, no wrong color or count)."""
        return not (self.hallucinated or self.color_errors or self.count_errors)

    @property
    def complete(self) -> bool:
        return self.correct and not self.missed


def score_text(text: str, scene: Scene | Mapping[str, Any]) -> TextScore:
    """Checks every object a text names against the scene: kind present, color right, number right."""
    objects = _objects(scene)
    present = sorted({k for k, _ in objects})
    mentions = parse_mentions(text)
    named = sorted({m.kind for m in mentions if not m.negated})
    score = TextScore(mentioned=named, present=present, hallucinated=[k for k in named if k not in present],
                      missed=[k for k in present if k not in {m.kind for m in mentions}])
    for m in mentions:
        if m.negated:
            score.counts_checked += 1
            if m.kind in present:
                score.count_errors.append(f"no {m.kind}s (there are {sum(k == m.kind for k, _ in objects)})")
            continue
        if m.color is not None and m.kind in present:
            score.colors_checked += 1
            if (m.kind, m.color) not in objects:
                score.color_errors.append(f"{m.color} {m.kind}")
        if m.count is not None and m.kind in present:
            truth = sum(1 for k, c in objects if k == m.kind and (m.color is None or c == m.color))
            if m.color is None or (m.kind, m.color) in objects:
                score.counts_checked += 1
                if truth != m.count:
                    score.count_errors.append(f"{m.count} {m.color + ' ' if m.color else ''}{m.kind} (there are {truth})")
    return score


def answer_count(answer: str, kind: str) -> int | None:
    """The number of `kind` an answer states: "There are three balls: ..." -> 3; "no balls" -> 0."""
    mentions = [m for m in parse_mentions(answer) if m.kind == kind and not m.predicate]
    for m in mentions:
        if m.count is not None and m.color is None:
            return m.count
    colored = [m for m in mentions if m.count is not None]
    if colored:
        return sum(m.count for m in colored)  # type: ignore[misc]
    return None


def answer_colors(answer: str, kind: str) -> set[str]:
    return {m.color for m in parse_mentions(answer) if m.kind == kind and m.color is not None}


def answer_yes_no(answer: str, kind: str | None = None) -> bool | None:
    low = answer.strip().lower()
    if re.match(r"^(yes|yeah|yep|correct)\b", low):
        return True
    if re.match(r"^(no|nope)\b", low):
        return False
    if kind is not None:
        mentions = [m for m in parse_mentions(answer) if m.kind == kind]
        if mentions:
            return not any(m.negated for m in mentions)
    return None


def score_answer(answer: str, qa_type: str, facts: Mapping[str, Any]) -> bool:
    """True when an answer to a world question (types of `language.questions`) states the facts."""
    if qa_type == "what":
        kinds = dict(facts["kinds"])
        mentions = [m for m in parse_mentions(answer) if not m.negated]
        if {m.kind for m in mentions} != set(kinds):
            return False
        return all(answer_count(answer, k) in (None, n) for k, n in kinds.items())
    if qa_type == "count":
        return answer_count(answer, facts["kind"]) == facts["count"]
    if qa_type == "color":
        return answer_colors(answer, facts["kind"]) == set(facts["colors"])
    if qa_type == "where":
        where = parse_position(answer)
        if where is None or list(where) != list(facts["position"]):
            return False
        named = [m for m in parse_mentions(answer) if not m.negated]
        if any(m.kind != facts["kind"] for m in named):
            return False
        return all(m.color in (None, facts.get("color")) for m in named)
    if qa_type == "exists":
        return answer_yes_no(answer, facts["kind"]) == bool(facts["present"])
    raise ValueError(f"unknown question type {qa_type!r}")
