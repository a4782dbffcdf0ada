"""The fixed, seeded request mix every benchmark uses (served stack and baseline alike).

The pictures and sounds come from bubogpt.samples (as in the tests). Same seed -> byte-identical
requests, on every run and every machine.

Mix (cycled in this order): image only, audio only, image + audio, multi-turn with history. Each
request of a concurrency level gets its own picture/sound (fresh content, so the served stack's
embedding cache does not turn later levels into cache hits), except the multi-turn request: it is
the follow-up of a chat about the picture of the previous image request of the same level, as in a
real conversation, so it re-sends that picture (the served stack hits its cache there; the baseline,
like the demo, encodes it again).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from bubogpt.samples import make_audio_bytes, make_image_bytes

__all__ = ["KINDS", "BenchRequest", "make_audio_bytes", "make_image_bytes"]

KINDS = ("image", "audio", "image+audio", "multi-turn")

QUESTIONS = (
    "What do you see in this picture?",
    "Describe the scene in detail.",
    "What is happening here?",
    "Which objects are in it, and where are they?",
    "What sound is this, and where could it come from?",
    "Do the picture and the sound belong together?",
    "Tell me a short story about it.",
    "What colours stand out?",
)
FOLLOW_UPS = ("And what else?", "Why do you think so?", "Can you say more about the left side?", "Is anything moving?")
CANNED_ANSWER = "It shows a bright gradient with a few coloured blocks on it, like a simple poster."


@dataclass(frozen=True)
class BenchRequest:
    index: int
    kind: str  # one of KINDS
    text: str
    image: bytes = b""
    audio: bytes = b""
    history: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (user, assistant) pairs
    max_new_tokens: int = 32
    min_new_tokens: int = 0  # > 0: answers at least this long (the long-answer level)

    @property
    def wants_image(self) -> bool:
        return bool(self.image)


def request_mix(count: int, seed: int = 0, max_new_tokens: int = 32, audio_seconds: float = 4.0,
                kinds: tuple[str, ...] = KINDS) -> list[BenchRequest]:
    """`count` requests cycling through `kinds`; identical for identical arguments."""
    rng = random.Random(seed)
    requests: list[BenchRequest] = []
    last_image: tuple[bytes, str] | None = None
    for i in range(count):
        kind = kinds[i % len(kinds)]
        media_seed = seed * 100_003 + i
        question = rng.choice(QUESTIONS)
        fmt = "JPEG" if i % 2 else "PNG"
        if kind == "image":
            image = make_image_bytes(320, 240, fmt=fmt, seed=media_seed)
            last_image = (image, question)
            requests.append(BenchRequest(i, kind, question, image=image, max_new_tokens=max_new_tokens))
        elif kind == "audio":
            audio = make_audio_bytes(seconds=audio_seconds, seed=media_seed)
            requests.append(BenchRequest(i, kind, question, audio=audio, max_new_tokens=max_new_tokens))
        elif kind == "image+audio":
            image = make_image_bytes(320, 240, fmt=fmt, seed=media_seed)
            audio = make_audio_bytes(seconds=audio_seconds, seed=media_seed + 7)
            requests.append(BenchRequest(i, kind, question, image=image, audio=audio, max_new_tokens=max_new_tokens))
        elif kind == "multi-turn":
            if last_image is None:  # a mix without image requests: start the chat about a new picture
                last_image = (make_image_bytes(320, 240, fmt=fmt, seed=media_seed), question)
            image, first_question = last_image
            history = ((first_question, CANNED_ANSWER),)
            requests.append(BenchRequest(i, kind, rng.choice(FOLLOW_UPS), image=image, history=history,
                                         max_new_tokens=max_new_tokens))
        else:
            raise ValueError(f"unknown request kind {kind!r}; choose from {KINDS}")
    return requests


def level_requests(concurrency: int, count: int, seed: int = 0, max_new_tokens: int = 32) -> list[BenchRequest]:
    """The requests of one concurrency level: a seed per (run seed, level), so levels differ in content."""
    return request_mix(count, seed=seed * 1000 + concurrency, max_new_tokens=max_new_tokens)


def grounding_pair_requests(count: int, seed: int = 0, max_new_tokens: int = 32) -> tuple[list[BenchRequest], list[BenchRequest]]:
    """Two sets of `count` image-bearing requests (image, image+audio, multi-turn) with pictures no level
    uses: one runs without grounding, the other with it, so neither hits the embedding cache more."""
    def pick(run_seed: int) -> list[BenchRequest]:
        return [r for r in request_mix(count * 2, seed=run_seed, max_new_tokens=max_new_tokens) if r.image][:count]

    return pick(seed * 1000 + 7001), pick(seed * 1000 + 7002)


def warmup_requests(seed: int = 0, max_new_tokens: int = 8) -> list[BenchRequest]:
    """One request of each kind, not measured (first-call costs: model loads, kernel selection)."""
    return request_mix(len(KINDS), seed=10_000 + seed, max_new_tokens=max_new_tokens)


def requests_per_level(concurrency: int, per_client: int, minimum: int, maximum: int) -> int:
    return max(minimum, min(maximum, per_client * concurrency))
