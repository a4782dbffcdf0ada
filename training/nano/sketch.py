"""Scene and sound sketches: the words the nano LLM reads in a modality slot while it learns the world.

A sketch is exactly `num_queries` (32) words, one token each, standing where the 32 query embeddings of
a modality go. The LLM is pre-trained on dialogues whose slots hold sketches, so it learns to read
objects, colours, counts, places and sounds from the slot; stage 1 and stage 2 then train the encoders'
projections to put embeddings the LLM reads the same way into those positions. (A 2-layer LLM that
never saw content in the slot could not learn to use it from a projection alone within the budget.)

    image: 4 words per object kind, in the fixed order of scene.OBJECT_KINDS (so query group k of the
           Q-Former always answers for kind k: a detector per kind, no sorting needed):
           kind count colour cell   (colour and cell of the leftmost object of that kind; PAD x4 if absent)
    audio: kind count loudness background duration
Unused positions hold PAD. Cells are the 3 x 3 thirds of the picture, one word each ("topleft").
"""

from __future__ import annotations

from typing import Any, Mapping

from training.world.language import NUMBERS
from training.world.scene import COLORS, OBJECT_KINDS
from training.world.sound import SOUND_NAMES

PAD = "<unk>"  # a token never produced by text: only marks empty sketch positions
WORDS_PER_KIND = 4
CELLS = tuple(v + h for v in ("top", "middle", "bottom") for h in ("left", "center", "right"))
LOUDNESS_WORDS = ("loud", "quiet")
SOUND_BACKGROUND_WORDS = ("quiet", "hiss")
NO_COUNT = "none"

# Every word a sketch may contain: each must be one token of the nano tokenizer.
VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(
    (*COLORS, *OBJECT_KINDS, *CELLS, *SOUND_NAMES, *NUMBERS, NO_COUNT, *LOUDNESS_WORDS, *SOUND_BACKGROUND_WORDS)
))


def _objects(scene: Any) -> list[Mapping[str, Any]]:
    if isinstance(scene, Mapping):
        return list(scene["objects"])
    return [o.to_dict(scene.width, scene.height) | {"mask": None} for o in scene.objects]


def _get(scene: Any, key: str) -> Any:
    return scene[key] if isinstance(scene, Mapping) else getattr(scene, key)


def object_order(scene: Any) -> list[int]:
    """Indices of the scene's objects left to right (box centre x, then y)."""
    objects = _objects(scene)
    def key(i: int):
        x0, y0, x1, y1 = objects[i]["box_xyxy"]
        return (x0 + x1, y0 + y1, i)
    return sorted(range(len(objects)), key=key)


def image_sketch(scene: Any, length: int = 32) -> list[str]:
    """A scene (Scene or its to_dict()) -> `length` words."""
    objects = _objects(scene)
    words: list[str] = []
    for kind in OBJECT_KINDS:
        members = [i for i in object_order(scene) if objects[i]["kind"] == kind]
        if not members:
            words += [PAD] * WORDS_PER_KIND
            continue
        first = objects[members[0]]
        horizontal, vertical = first["position"]
        words += [kind, NUMBERS[min(len(members), len(NUMBERS) - 1)], first["color"], vertical + horizontal]
    return (words + [PAD] * length)[:length]


def audio_sketch(sound: Any, length: int = 32) -> list[str]:
    """A sound (Sound or its to_dict()) -> `length` words."""
    count = _get(sound, "count")
    duration = _get(sound, "duration")
    words = [
        _get(sound, "kind"),
        NO_COUNT if count is None else NUMBERS[count],
        _get(sound, "loudness"),
        _get(sound, "background"),
        NUMBERS[min(max(round(duration), 0), len(NUMBERS) - 1)],
    ]
    return (words + [PAD] * length)[:length]


def word_ids(tokenizer, words: list[str]) -> list[int]:
    """Sketch words -> token ids ("▁word" pieces); raises if a word is not a single token."""
    vocab = tokenizer.get_vocab()
    ids = []
    for word in words:
        token = word if word == PAD else "▁" + word
        if token not in vocab:
            raise KeyError(f"sketch word {word!r} is not one token of this tokenizer")
        ids.append(vocab[token])
    return ids
