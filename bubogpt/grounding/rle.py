"""COCO run-length encoding of binary masks: pycocotools (the reference implementation, in C) encodes,
and measures areas and boxes; this module gives its results as JSON-friendly dicts and keeps what
pycocotools has no public API for: the count-string codec and a decoder that checks its input.
(Measured on 20 masks of 640 x 480: pycocotools' encode 13.8 ms vs 40.2 ms for the numpy version it
replaced, identical strings; encoding is on the serving path, in the grounding postprocess model.)

The format is the one pycocotools writes, so masks we send can be decoded by any COCO tool:

- The mask is flattened in column-major (Fortran) order: down the first column, then the next.
- ``counts`` alternates run lengths of 0s and 1s and always starts with a run of 0s, which
  is 0 long when the first pixel is set.
- Uncompressed form: ``{"size": [h, w], "counts": [int, ...]}``.
- Compressed form: ``{"size": [h, w], "counts": "<ascii string>"}``. Each count (from the
  fourth on, as the difference to the count two places earlier, which is usually small) is
  written as a signed little-endian base-32 varint: 5 value bits per character, bit 0x20 set
  when another character follows, character = value + 48. The last character's bit 0x10 is
  the sign. pycocotools hands this string out as ``bytes``; we use ``str`` so it is
  JSON-friendly, and accept either.

``to_bbox`` follows pycocotools' ``toBbox``: ``[x, y, w, h]`` in pixels, ``[0, 0, 0, 0]`` for
an empty mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "RLE",
    "area",
    "compress_counts",
    "decode",
    "decompress_counts",
    "encode",
    "is_rle",
    "to_bbox",
    "to_compressed",
    "to_uncompressed",
]

# {"size": [h, w], "counts": list[int] | str | bytes}
RLE = dict[str, Any]


def encode(mask: np.ndarray, compressed: bool = True) -> RLE:
    """Encode a 2-D mask (anything non-zero is foreground) as COCO RLE.

    ``compressed=True`` gives the string form pycocotools' ``mask.encode`` produces (as ``str``);
    ``compressed=False`` the list-of-ints form.
    """
    from pycocotools import mask as coco_mask

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    height, width = (int(s) for s in mask.shape)
    if mask.size == 0:
        rle: RLE = {"size": [height, width], "counts": compress_counts([0])}  # one zero-length run of 0s
    else:
        coded = coco_mask.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
        rle = {"size": [height, width], "counts": coded["counts"].decode("ascii")}
    return rle if compressed else to_uncompressed(rle)


def decode(rle: RLE) -> np.ndarray:
    """Decode either RLE form back to a ``bool`` array of shape ``(h, w)``."""
    height, width = _size(rle)
    counts = np.asarray(_counts(rle), dtype=np.int64)
    if counts.size and counts.min() < 0:
        raise ValueError("RLE counts must be non-negative")
    if int(counts.sum()) != height * width:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {height}*{width}={height * width}")
    # Even-numbered runs are 0s, odd-numbered runs are 1s.
    values = (np.arange(counts.size) % 2).astype(bool)
    flat = np.repeat(values, counts)
    return flat.reshape((height, width), order="F")


def area(rle: RLE) -> int:
    """Number of foreground pixels (the sum of the 1s runs)."""
    from pycocotools import mask as coco_mask

    return int(coco_mask.area(_coco(rle)))


def to_bbox(rle: RLE) -> list[float]:
    """Bounding box ``[x, y, w, h]`` of the foreground (pycocotools' ``toBbox``), without decoding."""
    from pycocotools import mask as coco_mask

    return [float(v) for v in coco_mask.toBbox(_coco(rle))]


def is_rle(obj: Any) -> bool:
    """True for a mapping that looks like a COCO RLE (has ``size`` and ``counts``)."""
    return isinstance(obj, dict) and "size" in obj and "counts" in obj


def to_compressed(rle: RLE) -> RLE:
    """Return the compressed-string form (``counts`` as ``str``)."""
    return {"size": list(_size(rle)), "counts": compress_counts(_counts(rle))}


def to_uncompressed(rle: RLE) -> RLE:
    """Return the list-of-ints form."""
    return {"size": list(_size(rle)), "counts": list(_counts(rle))}


def compress_counts(counts: list[int] | np.ndarray) -> str:
    """pycocotools' ``rleToString``: counts -> ASCII string."""
    out: list[str] = []
    counts = [int(c) for c in counts]
    for i, value in enumerate(counts):
        # From the fourth count on, store the difference to the same-parity count before it;
        # pycocotools' condition is i > 2, not i >= 2, and we must match it byte for byte.
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            chunk = x & 0x1F
            x >>= 5  # Python's >> on negative ints is arithmetic, as in the C code.
            # Stop once the remaining bits are pure sign extension of this chunk's bit 0x10.
            more = x != -1 if chunk & 0x10 else x != 0
            if more:
                chunk |= 0x20
            out.append(chr(chunk + 48))
    return "".join(out)


def decompress_counts(text: str | bytes) -> list[int]:
    """pycocotools' ``rleFrString``: ASCII string -> counts."""
    data = text.encode("ascii") if isinstance(text, str) else bytes(text)
    counts: list[int] = []
    pos = 0
    while pos < len(data):
        x = 0
        shift = 0
        more = True
        while more:
            if pos >= len(data):
                raise ValueError("truncated RLE counts string")
            chunk = data[pos] - 48
            if chunk < 0 or chunk > 0x3F:
                raise ValueError(f"invalid character {chr(data[pos])!r} in RLE counts string")
            x |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            pos += 1
            shift += 5
            if not more and chunk & 0x10:
                x |= -1 << shift  # sign-extend
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _coco(rle: RLE) -> dict:
    """The compressed form as pycocotools takes it (``counts`` as bytes)."""
    height, width = _size(rle)
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    elif not isinstance(counts, (bytes, bytearray)):
        counts = compress_counts(counts).encode("ascii")
    return {"size": [height, width], "counts": bytes(counts)}


def _size(rle: RLE) -> tuple[int, int]:
    if not is_rle(rle):
        raise ValueError("not a COCO RLE: expected a dict with 'size' and 'counts'")
    height, width = (int(s) for s in rle["size"])
    return height, width


def _counts(rle: RLE) -> list[int]:
    counts = rle["counts"]
    if isinstance(counts, (str, bytes, bytearray)):
        return decompress_counts(counts)
    return [int(c) for c in counts]
