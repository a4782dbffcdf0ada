"""Negative (unrelated) image-audio pairs for stage 2, as BuboGPT's `AudioImageNegDataset` makes them.

Each negative joins a random image of the image instruction set (MiniGPT-4's aligned set) with a random
audio of the audio instruction set (Clotho-Detail). The instruction is drawn from the official
negative prompts (`prompts/alignment_audio_image_neg.txt`), and the answer is, as in the official code,

    ["They seem unrelated. "] + <image description> + <audio description>

where the statement is always present when the instruction asks whether the two are related, and
otherwise with probability `unrelated_prob` (0.5 officially). The official code concatenates the two
captions without a separator; we join them with one space ("The image ... The audio ...").

Everything is a pure function of (seed, index): pair `i` is the same whatever was drawn before, which
makes the stream resumable from a counter alone. The candidate pools are read once from the two
readers (reservoir-sampled down to `pool_size` each, deterministically).
"""

from __future__ import annotations

import logging
import random
from typing import Iterable

from training.datasets import Reader, Sample
from training.prompts import NEGATIVE, UNRELATED_STATEMENT
from training.seeding import derive_seed

log = logging.getLogger(__name__)


def reservoir(samples: Iterable[Sample], size: int, seed: int) -> list[Sample]:
    """A uniform sample of at most `size` items, deterministic for a seed, in one pass."""
    rng = random.Random(seed)
    pool: list[Sample] = []
    for count, sample in enumerate(samples):
        if len(pool) < size:
            pool.append(sample)
        else:
            slot = rng.randrange(count + 1)
            if slot < size:
                pool[slot] = sample
    return pool


def negative_answer(image_caption: str, audio_caption: str, instruction: str, rng: random.Random, unrelated_prob: float) -> str:
    """The official answer form: optional "They seem unrelated. ", image caption, audio caption."""
    if "related" in instruction or rng.random() < unrelated_prob:
        prefix = UNRELATED_STATEMENT + " "
    else:
        prefix = ""
    return prefix + image_caption.strip() + " " + audio_caption.strip()


class NegativePairs:
    """Pair `i` of an endless, seeded stream of negative samples."""

    def __init__(
        self,
        name: str,
        images: Reader | list[Sample],
        audios: Reader | list[Sample],
        seed: int,
        unrelated_prob: float = 0.5,
        pool_size: int = 100_000,
    ):
        if not 0.0 <= unrelated_prob <= 1.0:
            raise ValueError(f"negatives {name!r}: unrelated_prob must be in [0, 1], got {unrelated_prob}")
        self.name = name
        self.seed = seed
        self.unrelated_prob = unrelated_prob
        self.pool_size = pool_size
        self._sources = (images, audios)
        self._pools: tuple[list[Sample], list[Sample]] | None = None

    @property
    def pools(self) -> tuple[list[Sample], list[Sample]]:
        if self._pools is None:
            images, audios = self._sources
            image_pool = reservoir((s for s in images if s.image is not None), self.pool_size, derive_seed(self.seed, self.name, "images"))
            audio_pool = reservoir((s for s in audios if s.audio is not None), self.pool_size, derive_seed(self.seed, self.name, "audios"))
            if not image_pool:
                raise ValueError(f"negatives {self.name!r}: the image set has no samples with an image")
            if not audio_pool:
                raise ValueError(f"negatives {self.name!r}: the audio set has no samples with audio")
            log.info("negatives %s: pools of %d images and %d audios", self.name, len(image_pool), len(audio_pool))
            self._pools = (image_pool, audio_pool)
        return self._pools

    def pair(self, index: int) -> Sample:
        image_pool, audio_pool = self.pools
        rng = random.Random(derive_seed(self.seed, self.name, "pair", index))
        image = image_pool[rng.randrange(len(image_pool))]
        audio = audio_pool[rng.randrange(len(audio_pool))]
        instruction = rng.choice(NEGATIVE)
        answer = negative_answer(image.answer, audio.answer, instruction, rng, self.unrelated_prob)
        return Sample(
            source=self.name,
            key=f"neg{index}:{image.key}+{audio.key}",
            answer=answer,
            image=image.image,
            audio=audio.audio,
            instruction=instruction,
            kind="negative",
        )
