"""A small synthetic world for training and evaluating the built-in `nano` model.

Pictures of a few simple objects (`scene`), sounds some of which those objects make (`sound`), and the
world's language about both (`language`): captions, detailed descriptions, question/answer pairs,
sound descriptions and related / unrelated image-audio answers, all with exact ground truth (boxes,
masks, counts, colours). `datasets` writes a corpus of it in the formats the training readers of
`training.datasets` accept; `training.eval` scores model outputs against the truth.

Everything is a pure function of an integer seed (numpy + PIL + soundfile; no torch), so the same seed
gives the same bytes, and other seeds give held-out scenes.
"""

from __future__ import annotations

from training.seeding import derive_seed

__all__ = ["derive_seed"]
