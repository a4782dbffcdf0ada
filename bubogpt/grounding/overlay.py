"""Draw grounding results like the paper's figures: translucent coloured masks, box outlines,
a numbered tag on each box, and a legend (index, label, score) in a strip below the image.

PIL only. Colours come from a fixed palette indexed by ``GroundedEntity.index``, so a client
can colour the matching words of the answer the same way (``color_for(index)``).

Mask blending, per channel: ``v = (1 - alpha) * v + alpha * colour`` in floating point, entity
after entity (where masks overlap the later entity lies on top), then ``floor(v + 0.5)`` once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bubogpt.grounding.schema import GroundedEntity

__all__ = ["PALETTE", "color_for", "draw_overlay", "save_overlay"]

log = logging.getLogger(__name__)

# Distinct, saturated colours (RGB) that stay readable under white text.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (0, 130, 200),  # blue
    (245, 130, 48),  # orange
    (145, 30, 180),  # purple
    (70, 190, 190),  # teal
    (240, 50, 230),  # magenta
    (170, 110, 40),  # brown
    (128, 128, 0),  # olive
    (0, 0, 128),  # navy
    (128, 0, 0),  # maroon
    (255, 200, 0),  # yellow
)

_BACKGROUND = (255, 255, 255)
_TEXT_DARK = (0, 0, 0)
_TEXT_LIGHT = (255, 255, 255)


def color_for(index: int) -> tuple[int, int, int]:
    """The palette colour of entity ``index`` (the palette repeats)."""
    return PALETTE[index % len(PALETTE)]


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    # Rec. 601 luma: dark text on light colours (the yellow), white on the rest.
    r, g, b = background
    return _TEXT_DARK if 0.299 * r + 0.587 * g + 0.114 * b > 160 else _TEXT_LIGHT


def draw_overlay(
    image: Image.Image | np.ndarray,
    entities: Sequence[GroundedEntity],
    alpha: float = 0.5,
    legend: bool = True,
    line_width: int | None = None,
) -> Image.Image:
    """Return a new RGB image with the entities drawn on ``image``.

    alpha: mask opacity in [0, 1].
    legend: append a white strip below the image listing index, label and score of every
        entity, so the legend covers nothing (the canvas also widens if a row is wider than the
        image); without it the result has the input's size.
    line_width: box outline width; by default about 1/200 of the shorter side, at least 2.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    base = base.convert("RGB")
    width, height = base.size

    pixels = np.asarray(base, dtype=np.float64).copy()
    for entity in entities:
        mask = entity.mask_array()
        if mask is None:
            continue
        if mask.shape != (height, width):
            raise ValueError(
                f"entity {entity.index} ({entity.label!r}): mask is {mask.shape[1]}x{mask.shape[0]}, "
                f"image is {width}x{height}"
            )
        colour = np.asarray(color_for(entity.index), dtype=np.float64)
        pixels[mask] = (1.0 - alpha) * pixels[mask] + alpha * colour
    # floor(x + 0.5) rather than np.rint, whose round-half-to-even would make 0.5 cases surprising.
    canvas = Image.fromarray(np.floor(pixels + 0.5).clip(0, 255).astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width_px = line_width if line_width is not None else max(2, round(min(width, height) / 200))
    # Boxes first, then all tags, so no outline cuts through another entity's tag.
    for entity in entities:
        x0, y0, x1, y1 = entity.box_xyxy
        draw.rectangle([round(x0), round(y0), round(x1), round(y1)], outline=color_for(entity.index), width=width_px)
    for entity in entities:
        colour = color_for(entity.index)
        x0, y0 = round(entity.box_xyxy[0]), round(entity.box_xyxy[1])
        left, top, right, bottom = draw.textbbox((x0, y0), str(entity.index), font=font)
        # Pad the tag a little and keep it inside the image.
        box = [left, top, right + 4, bottom + 2]
        shift_x = min(0, width - 1 - box[2]) - min(0, box[0])
        shift_y = min(0, height - 1 - box[3]) - min(0, box[1])
        box = [box[0] + shift_x, box[1] + shift_y, box[2] + shift_x, box[3] + shift_y]
        draw.rectangle(box, fill=colour)
        draw.text((x0 + shift_x + 2, y0 + shift_y + 1), str(entity.index), fill=_text_color(colour), font=font)

    if legend and entities:
        canvas = _with_legend(canvas, entities, font)
    return canvas


def _with_legend(canvas: Image.Image, entities: Sequence[GroundedEntity], font: ImageFont.ImageFont) -> Image.Image:
    """The canvas with a legend strip appended below it (one row per entity)."""
    probe = ImageDraw.Draw(canvas)
    rows = [f"{e.index}  {e.label}  {e.score:.2f}" for e in entities]
    boxes = [probe.textbbox((0, 0), row, font=font) for row in rows]
    text_h = max(b[3] for b in boxes)
    row_h = text_h + 6
    pad = 4
    swatch = text_h + 2
    width, height = canvas.size
    # Widen (white on the right) rather than cut off long labels on a narrow image.
    legend_w = pad + swatch + 6 + max(b[2] for b in boxes) + pad
    out = Image.new("RGB", (max(width, legend_w), height + pad * 2 + row_h * len(rows)), _BACKGROUND)
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    for row, (entity, text) in enumerate(zip(entities, rows)):
        top = height + pad + row * row_h
        draw.rectangle([pad, top + 2, pad + swatch, top + 2 + swatch], fill=color_for(entity.index))
        draw.text((pad + swatch + 6, top + 2), text, fill=_TEXT_DARK, font=font)
    return out


def save_overlay(
    image: Image.Image | np.ndarray,
    entities: Sequence[GroundedEntity],
    path: str | Path,
    **kwargs: object,
) -> Image.Image:
    """Draw the overlay (keyword arguments as in ``draw_overlay``), save it to ``path`` (format
    from the suffix) and return it."""
    overlay = draw_overlay(image, entities, **kwargs)  # type: ignore[arg-type]
    path = Path(path)
    overlay.save(path)
    log.info("saved grounding overlay with %d entities to %s", len(entities), path)
    return overlay
