"""Grounding overlay: blended masks, box outlines, numbered tags, legend strip."""

import io

import numpy as np
import pytest
from PIL import Image

from bubogpt.grounding import rle
from bubogpt.grounding.overlay import PALETTE, color_for, draw_overlay, save_overlay
from bubogpt.grounding.schema import GroundedEntity
from conftest import make_image_bytes

W, H = 160, 120
GREY = (100, 100, 100)


def _entities():
    swan = np.zeros((H, W), dtype=bool)
    swan[20:80, 30:100] = True
    water = np.zeros((H, W), dtype=bool)
    water[50:110, 60:150] = True
    return [
        GroundedEntity(0, "swan", 0.91, (30, 20, 99, 79), swan, tag="swan"),
        GroundedEntity(1, "water", 0.5, (60, 50, 149, 109), water, tag="water"),
    ]


def _grey():
    return Image.new("RGB", (W, H), GREY)


def test_palette():
    assert len(set(PALETTE)) == len(PALETTE) >= 10
    assert color_for(0) == PALETTE[0] == (230, 25, 75)
    assert color_for(1) == (60, 180, 75)
    assert color_for(len(PALETTE) + 1) == color_for(1)


def test_mask_pixels_blend_toward_entity_colour():
    out = np.asarray(draw_overlay(_grey(), _entities(), legend=False))
    assert out.shape == (H, W, 3)
    # Inside "swan" only: halfway between (100, 100, 100) and (230, 25, 75); 87.5 rounds up.
    assert tuple(out[30, 50]) == (165, 63, 88)
    # Inside "water" only, with (60, 180, 75).
    assert tuple(out[100, 120]) == (80, 140, 88)
    # Where both masks lie, "water" (drawn later) is blended over the unrounded "swan" blend
    # (165, 62.5, 87.5): (112.5, 121.25, 81.25), rounded once at the end.
    assert tuple(out[72, 85]) == (113, 121, 81)
    # Outside every mask and box: untouched.
    assert tuple(out[5, 5]) == GREY
    assert tuple(out[115, 10]) == GREY
    # A box outline is drawn in the entity's colour (top edge of "swan", clear of its tag).
    assert tuple(out[20, 60]) == color_for(0)
    # The numbered tag sits in the box's top-left corner, filled with the entity's colour.
    tag = out[20:28, 30:36].reshape(-1, 3)
    assert (tag == color_for(0)).all(axis=1).sum() > 10


def test_only_masks_boxes_and_tags_change_pixels():
    image = Image.open(io.BytesIO(make_image_bytes(W, H))).convert("RGB")
    before = np.asarray(image)
    entities = _entities()
    out = np.asarray(draw_overlay(image, entities, legend=False))
    touched = np.zeros((H, W), dtype=bool)
    for e in entities:
        x0, y0, x1, y1 = (int(v) for v in e.box_xyxy)
        touched[y0 : y1 + 1, x0 : x1 + 1] = True  # masks, outlines and tags all lie in the boxes
    np.testing.assert_array_equal(out[~touched], before[~touched])
    assert (out[touched] != before[touched]).any(axis=-1).mean() > 0.9


def test_alpha_limits_and_mask_forms():
    entities = _entities()
    assert tuple(np.asarray(draw_overlay(_grey(), entities, alpha=1.0, legend=False))[30, 50]) == color_for(0)
    assert tuple(np.asarray(draw_overlay(_grey(), entities, alpha=0.0, legend=False))[30, 50]) == GREY
    # A mask given as RLE (either form) draws exactly like the array; no mask draws the box only.
    as_rle = [
        GroundedEntity(e.index, e.label, e.score, e.box_xyxy, rle.encode(e.mask, compressed=i == 0))
        for i, e in enumerate(entities)
    ]
    np.testing.assert_array_equal(np.asarray(draw_overlay(_grey(), as_rle)), np.asarray(draw_overlay(_grey(), entities)))
    box_only = np.asarray(draw_overlay(_grey(), [GroundedEntity(0, "swan", 0.9, (30, 20, 99, 79))], legend=False))
    assert tuple(box_only[30, 50]) == GREY and tuple(box_only[20, 60]) == color_for(0)
    # numpy input works too
    np.testing.assert_array_equal(
        np.asarray(draw_overlay(np.asarray(_grey()), entities)), np.asarray(draw_overlay(_grey(), entities))
    )


def test_legend_strip_below_image():
    entities = _entities()
    plain = np.asarray(draw_overlay(_grey(), entities, legend=False))
    out = np.asarray(draw_overlay(_grey(), entities))
    assert out.shape[1] == W and out.shape[0] > H + 2 * 10
    # The image part is unchanged by the legend; the strip is white with one swatch per entity.
    np.testing.assert_array_equal(out[:H], plain)
    strip = out[H:].reshape(-1, 3)
    for e in entities:
        assert (strip == color_for(e.index)).all(axis=1).sum() >= 25
    assert (strip == 255).all(axis=1).mean() > 0.5
    # text is drawn (dark pixels in the strip)
    assert (strip.max(axis=1) < 100).sum() > 20
    # no entities: the image is returned as is
    np.testing.assert_array_equal(np.asarray(draw_overlay(_grey(), [])), np.asarray(_grey()))


def test_legend_widens_for_long_labels():
    long = [GroundedEntity(3, "a very long label " * 4, 0.5, (1, 1, 10, 10))]
    out = draw_overlay(Image.new("RGB", (40, 30), GREY), long)
    assert out.size[0] > 40


def test_mask_size_must_match_image():
    bad = GroundedEntity(0, "swan", 0.9, (0, 0, 5, 5), np.ones((10, 10), dtype=bool))
    with pytest.raises(ValueError, match="mask"):
        draw_overlay(_grey(), [bad])
    with pytest.raises(ValueError):
        draw_overlay(_grey(), _entities(), alpha=1.5)


def test_save_overlay(tmp_path):
    path = tmp_path / "overlay.png"
    returned = save_overlay(_grey(), _entities(), path)
    with Image.open(path) as saved:
        np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), np.asarray(returned))
