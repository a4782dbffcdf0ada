"""COCO RLE in pure numpy against known pycocotools encodings.

The "254L" and "d0" strings were worked out by hand from pycocotools' rleToString (below); the
others were computed once with pycocotools 2.0.11 (`pycocotools.mask.encode`, `area`, `toBbox`)
in a scratch virtualenv and pasted here as literals.
"""

import json

import numpy as np
import pytest

from bubogpt.grounding import rle

# 3x4 mask. Column-major it reads 0 0 1 | 1 1 1 | 1 0 0 | 0 0 1, so counts are [2, 5, 4, 1].
# Compressed: 2 -> "2", 5 -> "5", 4 -> "4"; the 4th count is stored as 1 - 5 = -4, whose low 5
# bits are 28 with the sign bit 0x10 set and nothing left but sign -> chr(28 + 48) = "L".
HAND_MASK = np.array([[0, 1, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1]], dtype=bool)


def _disk() -> np.ndarray:
    yy, xx = np.mgrid[0:120, 0:160]
    mask = (yy - 60) ** 2 + (xx - 70) ** 2 < 45**2
    mask[10:20, 150:160] = True
    return mask


def _big() -> np.ndarray:
    mask = np.zeros((700, 900), dtype=bool)
    mask[100:600, 50:51] = True
    mask[0:700, 800:890] = True
    return mask


def _single() -> np.ndarray:
    mask = np.zeros((6, 6), dtype=bool)
    mask[3, 4] = True
    return mask


# name: (mask, pycocotools counts string, area, toBbox [x, y, w, h])
REFERENCE = {
    "hand": (HAND_MASK, "254L", 6, [0.0, 0.0, 4.0, 3.0]),
    # A single run of 20 zeros: 20 = 0b10100 has bit 0x10 set, which would read as a sign, so
    # pycocotools adds a continuation char: chr((20 | 0x20) + 48) = "d", then chr(0 + 48) = "0".
    "zeros": (np.zeros((4, 5), dtype=bool), "d0", 0, [0.0, 0.0, 0.0, 0.0]),
    "ones": (np.ones((2, 2), dtype=bool), "04", 4, [0.0, 0.0, 2.0, 2.0]),
    "row": (np.array([[0, 0, 1]], dtype=bool), "21", 1, [2.0, 0.0, 1.0, 1.0]),
    "single": (_single(), "k018", 1, [4.0, 3.0, 1.0, 1.0]),
    "random": (
        np.random.default_rng(7).random((9, 11)) < 0.4,
        "11100031OON013OO1N01OO1090G001001O62HN010O23NN00",
        41,
        [0.0, 0.0, 11.0, 9.0],
    ),
    "disk": (
        _disk(),
        "SS3c0Q38I6K4L4L4L4M2N2M4M2N2N2N2N2N2N2O0O2N2N2O0O2O0O2O0O2O0O2O000O2O00000O2O0000000000000"
        "00000000000000000000001N1000001N10001N101N101N101N101N2N2N101N2N2N2N2N2N2N3L3N2N3L4L4L4L5J7"
        "HSR4GZnK00000000000000000F",
        6449,
        [26.0, 10.0, 134.0, 95.0],
    ),
    # Long runs (multi-character counts) and large negative deltas.
    "big": (_big(), "lXR1d?`SP`0TQm1XgV@", 63500, [50.0, 0.0, 840.0, 700.0]),
}


@pytest.mark.parametrize("name", list(REFERENCE))
def test_matches_pycocotools(name):
    mask, counts, area, bbox = REFERENCE[name]
    encoded = rle.encode(mask)
    assert encoded == {"size": list(mask.shape), "counts": counts}
    assert rle.area(encoded) == area == int(mask.sum())
    assert rle.to_bbox(encoded) == bbox
    np.testing.assert_array_equal(rle.decode(encoded), mask)
    # pycocotools hands out bytes; both spellings decode.
    np.testing.assert_array_equal(rle.decode({"size": list(mask.shape), "counts": counts.encode()}), mask)


def test_hand_worked_uncompressed_counts():
    assert rle.encode(HAND_MASK, compressed=False) == {"size": [3, 4], "counts": [2, 5, 4, 1]}
    # A mask whose first pixel is set starts with an empty run of zeros.
    assert rle.encode(np.ones((2, 2)), compressed=False)["counts"] == [0, 4]
    assert rle.decompress_counts("254L") == [2, 5, 4, 1]
    assert rle.compress_counts([2, 5, 4, 1]) == "254L"


@pytest.mark.parametrize("seed", range(5))
def test_round_trip_both_forms(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 60, size=2)
    mask = rng.random((h, w)) < rng.random()
    for compressed in (True, False):
        encoded = rle.encode(mask, compressed=compressed)
        json.dumps(encoded)  # JSON-friendly as it stands
        np.testing.assert_array_equal(rle.decode(encoded), mask)
        assert rle.area(encoded) == int(mask.sum())
    unc = rle.encode(mask, compressed=False)
    assert rle.to_compressed(unc) == rle.encode(mask)
    assert rle.to_uncompressed(rle.encode(mask)) == unc


def test_bbox_agrees_with_the_mask():
    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = np.zeros((30, 40), dtype=bool)
        y0, x0 = rng.integers(0, 25), rng.integers(0, 35)
        mask[y0 : y0 + rng.integers(1, 6), x0 : x0 + rng.integers(1, 6)] = True
        ys, xs = np.nonzero(mask)
        x, y = xs.min(), ys.min()
        assert rle.to_bbox(rle.encode(mask)) == [x, y, xs.max() - x + 1, ys.max() - y + 1]


def test_nonzero_values_count_as_foreground():
    mask = np.array([[0, 3], [255, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(rle.decode(rle.encode(mask)), mask > 0)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        rle.encode(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError):
        rle.decode({"size": [2, 2], "counts": [1, 2]})  # sums to 3, not 4
    with pytest.raises(ValueError):
        rle.decode({"counts": [4]})
    with pytest.raises(ValueError):
        rle.decompress_counts("d")  # continuation bit set on the last character


# --- the result schema's JSON form carries the mask as compressed RLE -----------------------

from bubogpt.grounding.schema import EntityMatch, GroundedEntity  # noqa: E402


def test_grounded_entity_json_round_trip():
    entity = GroundedEntity(2, "swan", 0.875, (30, 20.5, 99, 79), HAND_MASK, tag="swan")
    data = json.loads(json.dumps(entity.to_dict()))
    assert data == {
        "index": 2,
        "label": "swan",
        "score": 0.875,
        "box_xyxy": [30.0, 20.5, 99.0, 79.0],
        "mask": {"size": [3, 4], "counts": "254L"},
        "tag": "swan",
    }
    back = GroundedEntity.from_dict(data)
    assert isinstance(back.mask, dict)  # stays encoded until asked
    np.testing.assert_array_equal(back.mask_array(), HAND_MASK)
    assert back.mask_area() == 6
    assert back.to_dict() == data
    # Without a mask, and with an uncompressed RLE given as the mask.
    assert GroundedEntity(0, "sky", 0.3, (0, 0, 1, 1)).to_dict()["mask"] is None
    unc = GroundedEntity(0, "x", 1.0, (0, 0, 1, 1), {"size": [3, 4], "counts": [2, 5, 4, 1]})
    assert unc.to_dict()["mask"] == {"size": [3, 4], "counts": "254L"}


def test_entity_match_round_trip_and_checks():
    match = EntityMatch("black swans", 28, 39, 0, "swan")
    assert EntityMatch.from_dict(json.loads(json.dumps(match.to_dict()))) == match
    with pytest.raises(ValueError):
        EntityMatch("swan", 5, 5, 0, "swan")
    with pytest.raises(ValueError):
        EntityMatch("swan", 0, 3, 0, "swan")  # span length differs from phrase
    with pytest.raises(ValueError):
        GroundedEntity(0, "swan", 1.0, (0, 0, 1))
