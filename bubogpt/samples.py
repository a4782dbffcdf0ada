"""Deterministic synthetic inputs (pictures and sounds) for tests, benchmarks and demos."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def make_image_bytes(width: int = 320, height: int = 240, fmt: str = "PNG", seed: int = 0, mode: str = "RGB") -> bytes:
    """A gradient background with a few coloured blocks, encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1).astype(np.uint8)
    for _ in range(3):
        x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
        array[y0 : y0 + height // 4, x0 : x0 + width // 4] = rng.integers(0, 256, size=3)
    image = Image.fromarray(array, mode="RGB")
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def make_audio_bytes(seconds: float = 3.0, sample_rate: int = 16000, fmt: str = "WAV", seed: int = 0) -> bytes:
    """A tone sweep with a little noise, encoded as `fmt` (16-bit PCM for WAV)."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    signal = 0.4 * np.sin(2 * np.pi * (300 + 200 * t) * t) + 0.05 * rng.standard_normal(t.shape)
    buffer = io.BytesIO()
    sf.write(buffer, signal.astype(np.float32), sample_rate, format=fmt, subtype="PCM_16" if fmt == "WAV" else None)
    return buffer.getvalue()
