"""The world's language: a small template grammar about scenes and sounds, always true to the truth.

    caption(scene, rng)                 "Two red balls and a blue car on the grass under a blue sky."
    description(scene, rng)             MiniGPT-4-style detailed description (positions, sizes, occlusion)
    questions(scene, rng, n)            [QA(question, answer, type, facts)]: what / count / color / where / exists
    audio_caption(sound, rng)           "A dog barks three times."
    audio_description(sound, rng)       Clotho-Detail-style: "The audio is the sound of a dog barking. ..."
    source_answer(scene, sound, rng)    related pair (VGGSS-style): "The sound comes from the red dog on the left. ..."
    unrelated_answer(scene, sound, rng) the paper's negative pairs: "They seem unrelated. The image shows ... The audio is ..."

`rng` is a `random.Random`; every function is deterministic for its state. The vocabulary is closed
(scene.OBJECT_KINDS, scene.COLORS, sound.SOUND_KINDS, NUMBERS, position words), which is what
`training.eval` parses back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from training.prompts import UNRELATED_STATEMENT
from training.world.scene import Scene, SceneObject
from training.world.sound import SOUND_KINDS, Sound

NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
TIMES = {1: "once", 2: "twice", 3: "three times", 4: "four times", 5: "five times", 6: "six times"}
BACKGROUND_PHRASES = {
    "sky_grass": (" on the grass under a blue sky", " on the green grass"),
    "sky_water": (" by the water under a blue sky", " by the water"),
    "road": (" by the road under a blue sky", " near a gray road"),
    "gradient": (" in front of a plain background", ""),
    "noise": (" in front of a colorful background", ""),
}
BACKGROUND_SENTENCES = {
    "sky_grass": "The background is a blue sky above green grass.",
    "sky_water": "The background is a blue sky above calm water.",
    "road": "The background shows a blue sky, green grass and a gray road.",
    "gradient": "The background is a smooth gradient of color.",
    "noise": "The background is a blurry pattern of many colors.",
}
IMAGE_QUESTIONS = {
    "what": ("What objects are in the image?", "What can you see in this picture?", "What is in the image?"),
    "count": ("How many {kinds} are there?", "How many {kinds} can you see in the image?", "Count the {kinds} in the picture."),
    "color": ("What color is the {kind}?", "What color are the {kinds}?"),
    "where": ("Where is the {name}?", "In which part of the image is the {name}?"),
    "exists": ("Is there {a} {kind} in the image?", "Can you see {a} {kind} in the picture?"),
}
SIZE_WORDS = {"small": "small", "medium": "medium-sized", "large": "large"}
RELATED_QUESTION = "Are the audio and image related to each other? What are they?"


@dataclass
class QA:
    question: str
    answer: str
    type: str  # what | count | color | where | exists
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer, "type": self.type, "facts": self.facts}


# --------------------------------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------------------------------


def plural(noun: str) -> str:
    return noun + "s"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def number(n: int) -> str:
    return NUMBERS[n] if 0 <= n < len(NUMBERS) else str(n)


def times(n: int) -> str:
    return TIMES.get(n, f"{n} times")


def capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def position_phrase(horizontal: str, vertical: str) -> str:
    """("left", "top") -> "in the top left"; ("center", "middle") -> "in the center"."""
    if horizontal == "center" and vertical == "middle":
        return "in the center"
    if vertical == "middle":
        return f"on the {horizontal}"
    if horizontal == "center":
        return f"at the {vertical}"
    return f"in the {vertical} {horizontal}"


def count_phrase(n: int, kind: str, color: str | None = None, size: str | None = None) -> str:
    """"a small red ball", "two red balls", "no balls"."""
    words = " ".join(w for w in (size, color) if w)
    noun = kind if n == 1 else plural(kind)
    body = f"{words} {noun}" if words else noun
    return f"{article(body)} {body}" if n == 1 else f"{number(n)} {body}"


# --------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------


def left_to_right(scene: Scene) -> list[SceneObject]:
    """The scene's objects by box centre, left to right (then top to bottom): the order a viewer reads."""
    return sorted(scene.objects, key=lambda o: (o.box[0] + o.box[2], o.box[1] + o.box[3]))


def groups(scene: Scene) -> list[tuple[str, str, list[SceneObject]]]:
    """Objects grouped by (kind, color), groups and members left to right (a perceptual order, so a
    model can learn it from pixels; drawing order is not visible)."""
    order: dict[tuple[str, str], list[SceneObject]] = {}
    for obj in left_to_right(scene):
        order.setdefault((obj.kind, obj.color), []).append(obj)
    return [(kind, color, objs) for (kind, color), objs in order.items()]


def object_list(scene: Scene, rng: random.Random, sizes: bool = False) -> str:
    parts = []
    for kind, color, objs in groups(scene):
        size = objs[0].size if sizes and len(objs) == 1 and objs[0].size != "medium" and rng.random() < 0.5 else None
        parts.append(count_phrase(len(objs), kind, color, size))
    return join(parts)


def _is_are(scene: Scene) -> str:
    first = groups(scene)[0]
    return "is" if len(first[2]) == 1 else "are"


def caption(scene: Scene, rng: random.Random) -> str:
    listing = object_list(scene, rng, sizes=True)
    background = rng.choice(BACKGROUND_PHRASES[scene.background])
    template = rng.randrange(4)
    if template == 0:
        return capital(listing) + background + "."
    if template == 1:
        return "A picture of " + listing + background + "."
    if template == 2:
        return f"There {_is_are(scene)} " + listing + background + "."
    return capital(listing) + "."


def description(scene: Scene, rng: random.Random) -> str:
    sentences = ["The image shows " + object_list(scene, rng) + rng.choice(BACKGROUND_PHRASES[scene.background]) + "."]
    for kind, color, objs in groups(scene):
        places = [position_phrase(*scene.position(o)) for o in objs]
        if len(objs) == 1:
            sentences.append(f"The {color} {kind} is {SIZE_WORDS[objs[0].size]} and {places[0]}.")
        elif len(set(places)) == 1:
            sentences.append(f"The {number(len(objs))} {color} {plural(kind)} are both {places[0]}." if len(objs) == 2
                             else f"The {number(len(objs))} {color} {plural(kind)} are all {places[0]}.")
        else:
            sentences.append(f"The {number(len(objs))} {color} {plural(kind)} are {join(places)}.")
    hidden = []
    for obj in scene.objects:
        if obj.occluded_by and obj.visible_fraction < 0.9:
            front = scene.objects[obj.occluded_by[-1]]
            if (front.kind, front.color) != (obj.kind, obj.color):
                hidden.append(f"The {obj.color} {obj.kind} is partly hidden behind the {front.color} {front.kind}.")
            elif scene.count(obj.kind, obj.color) == 2:
                hidden.append(f"The two {obj.color} {plural(obj.kind)} overlap.")
            else:
                hidden.append(f"Two of the {obj.color} {plural(obj.kind)} overlap.")
    sentences.extend(hidden[:2])
    total = len(scene.objects)
    sentences.append("There is only one object." if total == 1 else f"In total there are {number(total)} objects.")
    sentences.append(BACKGROUND_SENTENCES[scene.background])
    return " ".join(sentences)


def _count_answer(scene: Scene, kind: str) -> str:
    n = scene.count(kind)
    if n == 0:
        return f"There are no {plural(kind)} in the image."
    if n == 1:
        return f"There is one {kind}."
    colors = [(color, len(objs)) for k, color, objs in groups(scene) if k == kind]
    answer = f"There are {number(n)} {plural(kind)}"
    if len(colors) > 1:
        answer += ": " + join([count_phrase(c, kind, color) for color, c in colors])
    return answer + "."


def _color_answer(scene: Scene, kind: str) -> str:
    objs = scene.of_kind(kind)
    colors = list(dict.fromkeys(o.color for o in objs))
    if len(objs) == 1:
        return f"The {kind} is {colors[0]}."
    if len(colors) == 1:
        return f"The {plural(kind)} are {'both' if len(objs) == 2 else 'all'} {colors[0]}."
    return f"The {plural(kind)} are {join(colors)}."


def _identifiable(scene: Scene) -> list[tuple[SceneObject, str]]:
    """Objects with a name that picks them out alone: their kind, or their color and kind."""
    out = []
    for obj in scene.objects:
        if scene.count(obj.kind) == 1:
            out.append((obj, obj.kind))
        elif scene.count(obj.kind, obj.color) == 1:
            out.append((obj, f"{obj.color} {obj.kind}"))
    return out


def question(scene: Scene, kind_of_question: str, rng: random.Random) -> QA | None:
    from training.world.scene import OBJECT_KINDS

    present = scene.kinds
    if kind_of_question == "what":
        return QA(rng.choice(IMAGE_QUESTIONS["what"]), f"There {_is_are(scene)} {object_list(scene, rng)}.", "what",
                  {"kinds": {k: scene.count(k) for k in present}})
    if kind_of_question == "count":
        kind = rng.choice(present) if rng.random() < 0.7 else rng.choice(OBJECT_KINDS)
        q = rng.choice(IMAGE_QUESTIONS["count"]).format(kinds=plural(kind))
        return QA(q, _count_answer(scene, kind), "count", {"kind": kind, "count": scene.count(kind)})
    if kind_of_question == "color":
        kind = rng.choice(present)
        template = IMAGE_QUESTIONS["color"][0 if scene.count(kind) == 1 else 1]
        colors = sorted({o.color for o in scene.of_kind(kind)})
        return QA(template.format(kind=kind, kinds=plural(kind)), _color_answer(scene, kind), "color", {"kind": kind, "colors": colors})
    if kind_of_question == "where":
        candidates = _identifiable(scene)
        if not candidates:
            return None
        obj, name = candidates[rng.randrange(len(candidates))]
        where = scene.position(obj)
        answer = f"The {obj.color} {obj.kind} is {position_phrase(*where)}."
        return QA(rng.choice(IMAGE_QUESTIONS["where"]).format(name=name), answer, "where",
                  {"kind": obj.kind, "color": obj.color, "position": list(where)})
    if kind_of_question == "exists":
        kind = rng.choice(present) if rng.random() < 0.5 else rng.choice(OBJECT_KINDS)
        n = scene.count(kind)
        q = rng.choice(IMAGE_QUESTIONS["exists"]).format(a=article(kind), kind=kind)
        if n == 0:
            answer = f"No, there is no {kind} in the image."
        elif n == 1:
            obj = scene.of_kind(kind)[0]
            answer = f"Yes, there is {count_phrase(1, kind, obj.color)} {position_phrase(*scene.position(obj))}."
        else:
            answer = f"Yes, there are {number(n)} {plural(kind)}."
        return QA(q, answer, "exists", {"kind": kind, "present": n > 0, "count": n})
    raise ValueError(f"unknown question type {kind_of_question!r}")


def questions(scene: Scene, rng: random.Random, n: int = 4) -> list[QA]:
    """`n` questions of varied types (no exact repeats)."""
    types = ["what", "count", "color", "where", "exists"]
    out: list[QA] = []
    seen: set[str] = set()
    for _ in range(6 * n):
        if len(out) == n:
            break
        qa = question(scene, rng.choice(types), rng)
        if qa is None:
            continue
        key = qa.type + repr(sorted(qa.facts.items()))
        if key not in seen:
            seen.add(key)
            out.append(qa)
    return out


# --------------------------------------------------------------------------------------------------
# Sounds and pairs
# --------------------------------------------------------------------------------------------------


def sound_subject(sound: Sound, definite: bool = False) -> str:
    """"A dog" / "The dog" / "The wind"."""
    if sound.kind == "wind":
        return "The wind"
    return ("The " if definite else "A ") + sound.kind


def sound_event_sentence(sound: Sound, definite: bool = False, adverb: bool = False) -> str:
    """"A dog barks three times." / "The wind blows."."""
    spec = SOUND_KINDS[sound.kind]
    tail = "" if sound.count is None else " " + times(sound.count)
    how = (", loudly" if sound.loudness == "loud" else ", quietly") if adverb else ""
    return f"{sound_subject(sound, definite)} {spec.verb}{tail}{how}."


def audio_caption(sound: Sound, rng: random.Random) -> str:
    spec = SOUND_KINDS[sound.kind]
    template = rng.randrange(3)
    if template == 0:
        return sound_event_sentence(sound)
    if template == 1:
        return "The sound of " + spec.noun + "."
    extra = " with a soft hiss in the background." if sound.background == "hiss" else " in a quiet place."
    return sound_event_sentence(sound)[:-1] + extra


def audio_description(sound: Sound, rng: random.Random) -> str:
    spec = SOUND_KINDS[sound.kind]
    sentences = [f"The audio is the sound of {spec.noun}."]
    if sound.count is None:
        sentences.append(f"The wind blows {'loudly' if sound.loudness == 'loud' else 'quietly'} for about {number(round(sound.duration))} seconds.")
    else:
        sentences.append(sound_event_sentence(sound, definite=True, adverb=True))
    sentences.append("There is a soft hiss in the background." if sound.background == "hiss" else "The background is quiet.")
    return " ".join(sentences)


def related(scene: Scene, sound: Sound) -> bool:
    """A pair is related when an object in the picture makes the sound."""
    return sound.source is not None and scene.count(sound.source) > 0


def source_object(scene: Scene, sound: Sound) -> SceneObject | None:
    """The object that makes the sound (the pair generator keeps it unique)."""
    if sound.source is None:
        return None
    objs = scene.of_kind(sound.source)
    return objs[0] if len(objs) == 1 else None


def source_answer(scene: Scene, sound: Sound, rng: random.Random, yes: bool = False) -> str:
    obj = source_object(scene, sound)
    if obj is None:
        raise ValueError("source_answer needs a scene with exactly one object of the sound's kind")
    where = position_phrase(*scene.position(obj))
    lead = "Yes, they are related. " if yes else ""
    return f"{lead}The sound comes from the {obj.color} {obj.kind} {where}. " + sound_event_sentence(sound, definite=True)


def unrelated_answer(scene: Scene, sound: Sound, rng: random.Random, statement: bool = True) -> str:
    if related(scene, sound):
        raise ValueError("unrelated_answer needs a pair whose sound no object of the picture makes")
    image = "The image shows " + object_list(scene, rng) + rng.choice(BACKGROUND_PHRASES[scene.background]) + "."
    audio = f"The audio is the sound of {SOUND_KINDS[sound.kind].noun}."
    return (UNRELATED_STATEMENT + " " if statement else "") + image + " " + audio


def pair_answer(scene: Scene, sound: Sound, rng: random.Random, yes: bool = False) -> str:
    return source_answer(scene, sound, rng, yes=yes) if related(scene, sound) else unrelated_answer(scene, sound, rng)
