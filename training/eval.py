"""Evaluation metrics on the synthetic world (`training.world`): plain data in, numbers out.

Model outputs are taken as plain data (answer strings; entities as dicts or `GroundedEntity` with a
label, an xyxy box and optionally a mask), so the same functions score the reference pipeline, the
served stack, or hand-written cases.

    parse_mentions(text)                       objects named in a text: kind, count, color, negation
    score_text(text, scene)                    captions / descriptions: hallucinated or missed kinds, wrong colors and counts
    score_answer(answer, qa_type, facts)       one question of the world (what / count / color / where / exists)
    score_audio(text, sound)                   the sound's kind and number of events
    classify_relation(text)                    "related" | "unrelated" | None; relation_accuracy(...)
    score_source_answer(answer, source)        names the right object (kind, color, place) as the sound's source
    box_iou, mask_iou, greedy_match            IoU and greedy one-to-one matching (no Hungarian)
    score_grounding(entities, truth)           precision / recall / F1 at an IoU threshold, mean box and mask IoU
    localisation_hit(entities, source)         the grounded object of the sound's kind overlaps the source
    evaluate(items, predictions)               all of the above over eval/items.jsonl of a world corpus
    print_table(metrics)                       a rich table (also returned as text)

    python -m training.eval --items data/world_eval/eval/items.jsonl --predictions preds.jsonl
    python -m training.eval --items data/world_eval/eval/items.jsonl --reference    # the truth scores 1.0

predictions.jsonl: one `{"id": ..., "answer": "...", "entities": [{"label", "box_xyxy", "mask"?}]}` a line.
"""

from __future__ import annotations

import argparse
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from bubogpt.grounding import rle as rle_codec
from training.world.scene import COLORS, OBJECT_KINDS, Scene, SceneObject
from training.world.sound import Sound

# --------------------------------------------------------------------------------------------------
# Parsing the world's language
# --------------------------------------------------------------------------------------------------

QUANTITIES = {"no": 0, "zero": 0, "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
              "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_KIND_RE = "|".join(OBJECT_KINDS)
_COLOR_RE = "|".join(COLORS)
_QUANT_RE = "|".join(QUANTITIES) + r"|\d+"
_NP = re.compile(
    rf"\b(?:(?P<q>{_QUANT_RE})\s+)?(?:(?P<size>small|large|big|tiny|medium-sized|medium)\s+)?"
    rf"(?:(?P<color>{_COLOR_RE})\s+)?(?P<kind>{_KIND_RE})(?P<plural>s)?\b"
)
_COLOR_LIST = rf"(?P<colors>(?:{_COLOR_RE})(?:(?:\s*,\s*|\s+and\s+|\s*,\s*and\s+)(?:{_COLOR_RE}))*)"
_PREDICATE = re.compile(
    rf"\b(?:the|both|all)\s+(?:(?:{_QUANT_RE})\s+)?(?P<kind>{_KIND_RE})s?\s+(?:is|are)\s+(?:both\s+|all\s+)?{_COLOR_LIST}\b"
)
_POSITION = re.compile(r"\b(?:in|at|on) the (?:(?P<v>top|middle|bottom) )?(?P<w>left|right|center|centre|top|bottom|middle)\b")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_TIMES = re.compile(rf"\b(?:(?P<word>once|twice)|(?P<n>{_QUANT_RE}) times)\b")
SOUND_WORDS = {
    "bird": r"\bbirds?\b|\bchirp", "dog": r"\bdogs?\b|\bbark", "cat": r"\bcats?\b|\bmeow", "car": r"\bcars?\b|\bhonk",
    "boat": r"\bboats?\b", "ball": r"\bballs?\b|\bbounc", "bell": r"\bbells?\b|\bring(?:s|ing)?\b",
    "drum": r"\bdrums?\b|\bbeat(?:s|ing)?\b", "wind": r"\bwind\b",
}
_UNRELATED = re.compile(r"\bunrelated\b|\bnot related\b|\bno relation|\bnot come from\b|\bno source\b|\bnot the source\b|\bnot in the (?:image|picture)\b")
_RELATED = re.compile(r"\bcomes? from\b|\b(?:are|is|seem) related\b|\bis the source\b|\bmakes? the sound\b|\bsource of the sound is\b")


@dataclass(frozen=True)
class Mention:
    kind: str
    count: int | None = None  # None: no number said ("the dog")
    color: str | None = None
    negated: bool = False  # "no dogs"
    predicate: bool = False  # from "the dogs are red and blue"


def _quantity(word: str | None) -> int | None:
    if word is None or word in ("the",):
        return None
    return int(word) if word.isdigit() else QUANTITIES.get(word)


def parse_mentions(text: str) -> list[Mention]:
    """Objects a text names, with the number, color and negation said with them."""
    low = text.lower()
    mentions = []
    for m in _NP.finditer(low):
        count = _quantity(m.group("q"))
        mentions.append(Mention(m.group("kind"), count, m.group("color"), negated=count == 0))
    for m in _PREDICATE.finditer(low):
        for color in re.findall(_COLOR_RE, m.group("colors")):
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


# --------------------------------------------------------------------------------------------------
# Text scores
# --------------------------------------------------------------------------------------------------


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
        count = {"once": 1, "twice": 2}[m.group("word")] if m.group("word") else _quantity(m.group("n"))
    return kinds, count


def score_audio(text: str, sound: Sound | Mapping[str, Any]) -> AudioScore:
    """Does a text name the sound's kind (and nothing else), and its number of events?"""
    kind = sound.kind if isinstance(sound, Sound) else sound["kind"]
    truth_count = sound.count if isinstance(sound, Sound) else sound.get("count")
    kinds, count = parse_sound(text)
    count_correct = None if truth_count is None or count is None else count == truth_count
    return AudioScore(kinds, kinds == [kind], count, count_correct)


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


# --------------------------------------------------------------------------------------------------
# Boxes and masks
# --------------------------------------------------------------------------------------------------


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes (continuous coordinates: area = (x1 - x0) * (y1 - y0))."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _mask(mask: Any) -> np.ndarray:
    if isinstance(mask, dict):
        return rle_codec.decode(mask)
    return np.asarray(mask).astype(bool)


def mask_iou(a: Any, b: Any) -> float:
    """IoU of two masks (bool arrays or COCO RLE dicts) of the same size; two empty masks give 0."""
    a, b = _mask(a), _mask(b)
    if a.shape != b.shape:
        raise ValueError(f"mask sizes differ: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def greedy_match(iou: np.ndarray, threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """One-to-one matches (row, column, iou), best IoU first, each at least `threshold` (no Hungarian)."""
    iou = np.asarray(iou, dtype=float)
    if iou.size == 0:
        return []
    order = np.argsort(-iou, axis=None, kind="stable")
    rows, cols = np.unravel_index(order, iou.shape)
    used_r, used_c, matches = set(), set(), []
    for r, c in zip(rows.tolist(), cols.tolist()):
        value = float(iou[r, c])
        if value < threshold or value <= 0.0:
            break
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        matches.append((r, c, value))
    return matches


@dataclass
class Entity:
    label: str
    box: tuple[float, float, float, float]
    mask: Any = None

    @property
    def kind(self) -> str | None:
        return label_kind(self.label)


def label_kind(label: str) -> str | None:
    """The world's object kind a detector phrase names ("red balls" -> "ball"); None if none."""
    m = re.search(rf"\b({_KIND_RE}|sky|grass|water|road)s?\b", label.lower())
    return m.group(1) if m else None


def as_entity(obj: Any) -> Entity:
    """dict {"label", "box_xyxy", "mask"?} (scene objects: {"kind", ...}), GroundedEntity, SceneObject or Entity."""
    if isinstance(obj, Entity):
        return obj
    if isinstance(obj, SceneObject):
        return Entity(obj.kind, tuple(float(v) for v in obj.visible_box), obj.mask)  # type: ignore[arg-type]
    if isinstance(obj, Mapping):
        label = obj.get("label", obj.get("kind"))
        box = obj.get("visible_box_xyxy", obj.get("box_xyxy"))
        return Entity(str(label), tuple(float(v) for v in box), obj.get("mask"))  # type: ignore[arg-type]
    if hasattr(obj, "box_xyxy") and hasattr(obj, "label"):
        return Entity(obj.label, tuple(float(v) for v in obj.box_xyxy), getattr(obj, "mask", None))
    raise TypeError(f"cannot read an entity from {type(obj).__name__}")


@dataclass
class GroundingScore:
    tp: int
    fp: int
    fn: int
    box_ious: list[float]  # of the matches
    mask_ious: list[float]  # of the matches where both have a mask

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else (1.0 if not self.fn else 0.0)

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def mean_box_iou(self) -> float:
        return float(np.mean(self.box_ious)) if self.box_ious else float("nan")

    @property
    def mean_mask_iou(self) -> float:
        return float(np.mean(self.mask_ious)) if self.mask_ious else float("nan")


def truth_entities(scene: Scene | Mapping[str, Any], regions: bool = False) -> list[Entity]:
    """The scene's objects (and background regions) as entities: visible box, visible mask."""
    if isinstance(scene, Scene):
        out = [as_entity(o) for o in scene.objects]
        if regions:
            out += [Entity(r.label, tuple(float(v) for v in r.box), r.mask) for r in scene.regions]  # type: ignore[misc]
        return out
    out = [as_entity(o) for o in scene["objects"]]
    if regions:
        out += [Entity(r["label"], tuple(float(v) for v in r["box_xyxy"]), r["mask"]) for r in scene.get("regions", [])]  # type: ignore[misc]
    return out


def score_grounding(predictions: Iterable[Any], truth: Scene | Mapping[str, Any] | Iterable[Any], iou_threshold: float = 0.5,
                    match_labels: bool = True) -> GroundingScore:
    """Greedy one-to-one matching by box IoU (only same-kind pairs with `match_labels`); mask IoU of the matches."""
    preds = [as_entity(p) for p in predictions]
    if isinstance(truth, (Scene, Mapping)):
        truths = truth_entities(truth)
    else:
        truths = [as_entity(t) for t in truth]
    iou = np.zeros((len(preds), len(truths)))
    for i, p in enumerate(preds):
        for j, t in enumerate(truths):
            if match_labels and p.kind != t.kind:
                continue
            iou[i, j] = box_iou(p.box, t.box)
    matches = greedy_match(iou, iou_threshold)
    mask_ious = [mask_iou(preds[i].mask, truths[j].mask) for i, j, _ in matches
                 if preds[i].mask is not None and truths[j].mask is not None]
    return GroundingScore(tp=len(matches), fp=len(preds) - len(matches), fn=len(truths) - len(matches),
                          box_ious=[v for _, _, v in matches], mask_ious=mask_ious)


def localisation_hit(entities: Iterable[Any], source: Any, iou_threshold: float = 0.5, mode: str = "iou") -> bool:
    """Sound-source localisation: an entity of the source's kind overlaps the source.

    mode "iou": box IoU >= threshold with the source's visible box; "point": the entity's box centre
    falls inside the source's visible mask (or box when there is no mask).
    """
    target = as_entity(source)
    for e in map(as_entity, entities):
        if e.kind != target.kind:
            continue
        if mode == "iou" and box_iou(e.box, target.box) >= iou_threshold:
            return True
        if mode == "point":
            cx, cy = (e.box[0] + e.box[2]) / 2, (e.box[1] + e.box[3]) / 2
            if target.mask is not None:
                m = _mask(target.mask)
                if 0 <= int(cy) < m.shape[0] and 0 <= int(cx) < m.shape[1] and m[int(cy), int(cx)]:
                    return True
            elif target.box[0] <= cx < target.box[2] and target.box[1] <= cy < target.box[3]:
                return True
    return False


# --------------------------------------------------------------------------------------------------
# Aggregation over a corpus's eval items
# --------------------------------------------------------------------------------------------------


@dataclass
class Metric:
    total: float = 0.0
    count: int = 0

    def add(self, value: float | bool | None) -> None:
        if value is None:
            return
        self.total += float(value)
        self.count += 1

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else float("nan")


class Metrics(dict):
    """name -> Metric, created on first use."""

    def add(self, name: str, value: float | bool | None) -> None:
        self.setdefault(name, Metric()).add(value)

    def summary(self) -> dict[str, float]:
        return {name: metric.value for name, metric in sorted(self.items())}


def evaluate(items: Iterable[Mapping[str, Any]], predictions: Mapping[str, Mapping[str, Any]], iou_threshold: float = 0.5) -> Metrics:
    """Scores predictions ({id: {"answer", "entities"?}}) on eval items (eval/items.jsonl of a corpus).

    Items without a prediction are counted in "missing". Grounding is scored on items whose
    prediction has "entities" (micro-averaged precision / recall over all of them).
    """
    metrics = Metrics()
    grounding = GroundingScore(0, 0, 0, [], [])
    for item in items:
        prediction = predictions.get(item["id"])
        metrics.add("missing", prediction is None)
        if prediction is None:
            continue
        answer = str(prediction.get("answer", ""))
        truth = item["truth"]
        task = item["task"]
        scene = truth.get("scene")
        if task in ("caption", "describe"):
            s = score_text(answer, scene)
            metrics.add(f"{task}.correct", s.correct)
            metrics.add(f"{task}.complete", s.complete)
            metrics.add(f"{task}.kind_precision", s.kind_precision)
            metrics.add(f"{task}.kind_recall", s.kind_recall)
            metrics.add(f"{task}.color_accuracy", s.color_accuracy)
            metrics.add(f"{task}.count_accuracy", s.count_accuracy)
        elif task == "qa":
            ok = score_answer(answer, truth["qa"]["type"], truth["qa"]["facts"])
            metrics.add("qa.accuracy", ok)
            metrics.add(f"qa.{truth['qa']['type']}", ok)
        elif task in ("audio", "audio_caption"):
            s = score_audio(answer, truth["sound"])
            metrics.add(f"{task}.kind_accuracy", s.kind_correct)
            metrics.add(f"{task}.count_accuracy", s.count_correct)
        elif task in ("source", "negative"):
            metrics.add("relation.accuracy", relation_accuracy([(answer, truth["related"])]))
            if truth["related"]:
                s = score_source_answer(answer, truth["source"])
                metrics.add("source.answer_accuracy", s.correct)
                metrics.add("source.kind_accuracy", s.kind)
                if "entities" in prediction:
                    metrics.add("source.localisation", localisation_hit(prediction["entities"], truth["source"], iou_threshold))
            else:
                image_part, audio_part = split_pair_answer(answer)
                metrics.add("negative.image_correct", score_text(image_part, scene).correct)
                metrics.add("negative.audio_kind_accuracy", score_audio(audio_part, truth["sound"]).kind_correct)
        if scene is not None and "entities" in prediction:
            g = score_grounding(prediction["entities"], scene, iou_threshold)
            grounding = GroundingScore(grounding.tp + g.tp, grounding.fp + g.fp, grounding.fn + g.fn,
                                       grounding.box_ious + g.box_ious, grounding.mask_ious + g.mask_ious)
            metrics.add("grounding.images", 1)
    g = grounding
    for name, value, n in (("precision", g.precision, g.tp + g.fp), ("recall", g.recall, g.tp + g.fn), ("f1", g.f1, g.tp + g.fn),
                           ("box_iou", g.mean_box_iou, len(g.box_ious)), ("mask_iou", g.mean_mask_iou, len(g.mask_ious))):
        if n and value == value:  # not NaN
            metrics[f"grounding.{name}"] = Metric(value * n, n)
    return metrics


def reference_predictions(items: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The corpus's own answers and true objects as predictions (a perfect model; scores 1.0)."""
    out = {}
    for item in items:
        prediction: dict[str, Any] = {"answer": item["reference"]}
        scene = item["truth"].get("scene")
        if scene is not None:
            prediction["entities"] = [{"label": o["kind"], "box_xyxy": o["visible_box_xyxy"], "mask": o["mask"]} for o in scene["objects"]]
        out[item["id"]] = prediction
    return out


def format_table(metrics: Mapping[str, Any], title: str = "world evaluation"):
    """A rich Table of metric, value, n (Metric objects or plain numbers)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("n", justify="right")
    for name in sorted(metrics):
        m = metrics[name]
        value, count = (m.value, m.count) if isinstance(m, Metric) else (float(m), None)
        table.add_row(name, "-" if value != value else f"{value:.3f}", "" if count is None else str(count))
    return table


def print_table(metrics: Mapping[str, Any], title: str = "world evaluation", console=None) -> str:
    """Prints the table (to `console`, or stdout) and returns it as plain text."""
    from rich.console import Console

    table = format_table(metrics, title)
    recorder = Console(record=True, width=100, file=io.StringIO())
    recorder.print(table)
    text = recorder.export_text()
    (console or Console()).print(table)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.eval", description="Score predictions on a world corpus's eval items.")
    parser.add_argument("--items", required=True, help="eval/items.jsonl of a corpus (training.world.datasets)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help='JSONL: {"id", "answer", "entities"?} per line')
    source.add_argument("--reference", action="store_true", help="score the corpus's own answers (sanity check)")
    parser.add_argument("--iou", type=float, default=0.5)
    args = parser.parse_args(argv)
    with open(args.items) as handle:
        items = [json.loads(line) for line in handle if line.strip()]
    if args.reference:
        predictions = reference_predictions(items)
    else:
        with open(args.predictions) as handle:
            predictions = {p["id"]: p for p in (json.loads(line) for line in handle if line.strip())}
    print_table(evaluate(items, predictions, args.iou), title=f"world evaluation ({len(items)} items)")


if __name__ == "__main__":
    main()
