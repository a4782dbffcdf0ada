"""Builders: a Grounding DINO from a preset name (GDINO_PRESETS) or a config."""

from __future__ import annotations

from pathlib import Path

from bubogpt.grounding.grounding_dino.config import GDINO_PRESETS, GroundingDinoConfig
from bubogpt.grounding.grounding_dino.model import GroundingDino


def build_grounding_dino(
    preset: str | GroundingDinoConfig = "swint_ogc", text_encoder_dir: str | Path | None = None
) -> GroundingDino:
    """A randomly initialised model; with `text_encoder_dir` the BERT sizes come from its config.json."""
    cfg = GDINO_PRESETS[preset] if isinstance(preset, str) else preset
    if text_encoder_dir is not None:
        cfg = cfg.with_text_encoder_dir(text_encoder_dir)
    return GroundingDino(cfg)
