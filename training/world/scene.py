"""Pictures of the synthetic world: simple objects drawn procedurally, with exact boxes and masks.

    scene = make_scene(seed)                      # deterministic: same seed -> same pixels and truth
    scene.jpeg(), scene.png()                     # encoded bytes
    for obj in scene.objects:                     # in drawing order: later objects hide earlier ones
        obj.kind, obj.color, obj.size             # "dog", "red", "small"
        obj.box                                   # amodal box of the whole drawn object, xyxy pixels
        obj.mask                                  # bool (h, w): the VISIBLE part, after occlusion
        obj.visible_box, obj.position             # tight box of `mask`; ("left", "top") thirds
    scene.regions                                 # background "stuff" (sky, grass, water, road) masks
    scene.tags                                    # object kinds + region labels (all in ram.TINY_TAG_LIST)

Boxes are integer pixel coordinates `(x0, y0, x1, y1)` with x1/y1 exclusive, so width = x1 - x0; they
equal `rle.to_bbox` of the mask converted to xyxy. Objects are drawn without anti-aliasing, so a mask
is exactly the set of pixels the object coloured. Every object keeps at least `MIN_VISIBLE` of its
pixels visible; which objects hide which is in `occluded_by`.

Only numpy and PIL: no torch, so corpus generation starts fast.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from bubogpt.grounding import rle as rle_codec

# The world's things. Every name (objects and background regions) is a tag of ram.TINY_TAG_LIST.
OBJECT_KINDS: tuple[str, ...] = ("ball", "bird", "boat", "car", "cat", "dog", "flower", "tree")
REGION_LABELS: tuple[str, ...] = ("sky", "grass", "water", "road")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (35, 75, 215),
    "yellow": (245, 215, 35),
    "white": (246, 246, 246),
    "black": (22, 22, 22),
    "orange": (245, 135, 25),
    "purple": (135, 55, 185),
}
KIND_COLORS: dict[str, tuple[str, ...]] = {
    "tree": ("green", "yellow", "orange", "red"),
    "flower": ("red", "yellow", "white", "purple", "blue", "orange"),
}
# Longest side of an object's layout box, as a fraction of min(width, height).
SIZES: dict[str, tuple[float, float]] = {"small": (0.17, 0.23), "medium": (0.28, 0.36), "large": (0.44, 0.54)}
# Width / height of each kind's layout box.
ASPECTS: dict[str, float] = {"ball": 1.0, "bird": 1.4, "boat": 1.25, "car": 2.0, "cat": 1.25, "dog": 1.4, "flower": 0.6, "tree": 0.75}
BACKGROUNDS: tuple[str, ...] = ("sky_grass", "sky_water", "road", "gradient", "noise")
BACKGROUND_REGIONS: dict[str, tuple[str, ...]] = {
    "sky_grass": ("sky", "grass"), "sky_water": ("sky", "water"), "road": ("sky", "grass", "road"), "gradient": (), "noise": (),
}
IMAGE_SIZES: tuple[tuple[int, int], ...] = (
    (224, 224), (256, 224), (288, 224), (320, 240), (256, 256), (320, 256), (288, 288), (240, 288),
)
MIN_VISIBLE = 0.45  # fraction of an object's pixels that stay visible
MIN_VISIBLE_PIXELS = 120
OCCLUSION_MIN = 0.03  # fraction of an object's pixels another must hide to count in occluded_by
# one quality for every JPEG of the world: the encoders train on what the corpus holds
JPEG_QUALITY = 92

Box = tuple[int, int, int, int]


def tight_box(mask: np.ndarray) -> Box | None:
    """Tight (x0, y0, x1, y1) box of a bool mask, x1/y1 exclusive; None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def position_of(box: Sequence[float], width: int, height: int) -> tuple[str, str]:
    """(horizontal, vertical) third of the box centre: ("left"|"center"|"right", "top"|"middle"|"bottom")."""
    cx = (box[0] + box[2]) / 2 / width
    cy = (box[1] + box[3]) / 2 / height
    horizontal = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "center"
    vertical = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    return horizontal, vertical


@dataclass
class SceneObject:
    kind: str
    color: str
    size: str  # small | medium | large
    box: Box  # amodal: the whole drawn object
    mask: np.ndarray  # visible pixels, bool (h, w)
    area: int  # pixels of the whole object
    occluded_by: tuple[int, ...] = ()  # indices of later objects that hide part of this one
    flipped: bool = False  # facing left instead of right
    full_mask: np.ndarray | None = field(default=None, repr=False)  # in memory only

    @property
    def visible_area(self) -> int:
        return int(self.mask.sum())

    @property
    def visible_fraction(self) -> float:
        return self.visible_area / self.area if self.area else 0.0

    @property
    def visible_box(self) -> Box:
        box = tight_box(self.mask)
        assert box is not None
        return box

    def position(self, width: int, height: int) -> tuple[str, str]:
        return position_of(self.box, width, height)

    def to_dict(self, width: int, height: int) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "color": self.color,
            "size": self.size,
            "box_xyxy": list(self.box),
            "visible_box_xyxy": list(self.visible_box),
            "position": list(self.position(width, height)),
            "area": self.area,
            "visible_area": self.visible_area,
            "occluded_by": list(self.occluded_by),
            "flipped": self.flipped,
            "mask": rle_codec.encode(self.mask),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneObject:
        return cls(
            kind=data["kind"], color=data["color"], size=data["size"], box=tuple(int(v) for v in data["box_xyxy"]),  # type: ignore[arg-type]
            mask=rle_codec.decode(data["mask"]), area=int(data["area"]), occluded_by=tuple(data.get("occluded_by", ())),
            flipped=bool(data.get("flipped", False)),
        )


@dataclass
class Region:
    """A background area ("stuff"): the visible part of sky, grass, water or road."""

    label: str
    mask: np.ndarray

    @property
    def box(self) -> Box:
        box = tight_box(self.mask)
        assert box is not None
        return box

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "box_xyxy": list(self.box), "area": int(self.mask.sum()), "mask": rle_codec.encode(self.mask)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Region:
        return cls(label=data["label"], mask=rle_codec.decode(data["mask"]))


@dataclass
class Scene:
    seed: int
    width: int
    height: int
    background: str
    objects: list[SceneObject]
    regions: list[Region]
    pixels: np.ndarray | None = field(default=None, repr=False)  # uint8 (h, w, 3); None when loaded from a dict

    @property
    def tags(self) -> list[str]:
        return sorted({o.kind for o in self.objects} | {r.label for r in self.regions})

    @property
    def kinds(self) -> list[str]:
        return sorted({o.kind for o in self.objects})

    def count(self, kind: str, color: str | None = None) -> int:
        return sum(1 for o in self.objects if o.kind == kind and (color is None or o.color == color))

    def of_kind(self, kind: str) -> list[SceneObject]:
        return [o for o in self.objects if o.kind == kind]

    def position(self, obj: SceneObject) -> tuple[str, str]:
        return obj.position(self.width, self.height)

    def image(self) -> Image.Image:
        if self.pixels is None:
            raise ValueError("this scene has no pixels (loaded from its annotations)")
        return Image.fromarray(self.pixels, "RGB")

    def encode(self, fmt: str = "PNG", quality: int = JPEG_QUALITY) -> bytes:
        buffer = io.BytesIO()
        if fmt.upper() in ("JPEG", "JPG"):
            self.image().save(buffer, format="JPEG", quality=quality)
        else:
            self.image().save(buffer, format=fmt.upper())
        return buffer.getvalue()

    def png(self) -> bytes:
        return self.encode("PNG")

    def jpeg(self, quality: int = JPEG_QUALITY) -> bytes:
        return self.encode("JPEG", quality)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly truth (masks as compressed COCO RLE)."""
        return {
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "background": self.background,
            "tags": self.tags,
            "objects": [o.to_dict(self.width, self.height) for o in self.objects],
            "regions": [r.to_dict() for r in self.regions],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(
            seed=int(data["seed"]), width=int(data["width"]), height=int(data["height"]), background=data["background"],
            objects=[SceneObject.from_dict(o) for o in data["objects"]], regions=[Region.from_dict(r) for r in data["regions"]],
        )


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------


class _Frame:
    """Maps (u, v) in [0, 1]^2 of an object's layout box to pixels; u is mirrored when flipped."""

    def __init__(self, x: float, y: float, w: float, h: float, flip: bool):
        self.x, self.y, self.w, self.h, self.flip = x, y, w, h, flip

    def p(self, u: float, v: float) -> tuple[float, float]:
        return (self.x + (1.0 - u if self.flip else u) * self.w, self.y + v * self.h)

    def box(self, u0: float, v0: float, u1: float, v1: float) -> list[float]:
        (xa, ya), (xb, yb) = self.p(u0, v0), self.p(u1, v1)
        return [min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)]

    def poly(self, *points: tuple[float, float]) -> list[tuple[float, float]]:
        return [self.p(u, v) for u, v in points]

    def lw(self, fraction: float) -> int:
        return max(1, round(fraction * max(self.w, self.h)))


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int, int]:
    if sum(rgb) < 120:  # black: shades go lighter
        return tuple(min(255, int(c + 70 * (1.0 - factor) + 45)) for c in rgb) + (255,)  # type: ignore[return-value]
    return tuple(int(c * factor) for c in rgb) + (255,)  # type: ignore[return-value]


def _rgba(rgb: Iterable[int]) -> tuple[int, int, int, int]:
    return tuple(int(c) for c in rgb) + (255,)  # type: ignore[return-value]


DARK = (38, 38, 38, 255)
BROWN = (112, 72, 36, 255)
LEAF = (45, 140, 50, 255)


def _draw_ball(d: ImageDraw.ImageDraw, f: _Frame, c, ol, lw, rng) -> None:
    d.ellipse(f.box(0, 0, 1, 1), fill=c, outline=ol, width=lw)
    seam = (250, 250, 250, 255) if sum(c[:3]) < 600 else (200, 30, 30, 255)
    d.ellipse(f.box(0.3, 0.04, 0.7, 0.96), outline=seam, width=max(1, lw))
    d.ellipse(f.box(0.2, 0.16, 0.36, 0.32), fill=(255, 255, 255, 255))


def _draw_bird(d, f, c, ol, lw, rng) -> None:
    dark = _shade(c[:3], 0.65)
    d.polygon(f.poly((0.0, 0.32), (0.24, 0.5), (0.0, 0.72)), fill=dark, outline=ol)
    w = f.lw(0.025)
    d.line(f.poly((0.42, 0.8), (0.4, 1.0)), fill=DARK, width=w)
    d.line(f.poly((0.53, 0.8), (0.55, 1.0)), fill=DARK, width=w)
    d.ellipse(f.box(0.12, 0.36, 0.76, 0.86), fill=c, outline=ol, width=lw)
    d.ellipse(f.box(0.55, 0.1, 0.86, 0.56), fill=c, outline=ol, width=lw)
    beak = (250, 210, 40, 255) if c[:3] == COLORS["orange"] else (245, 135, 25, 255)
    d.polygon(f.poly((0.84, 0.27), (1.0, 0.35), (0.84, 0.43)), fill=beak, outline=ol)
    d.polygon(f.poly((0.28, 0.5), (0.62, 0.5), (0.38, 0.76)), fill=dark, outline=ol)
    d.ellipse(f.box(0.72, 0.24, 0.78, 0.32), fill=DARK if sum(c[:3]) > 120 else (240, 240, 240, 255))


def _draw_boat(d, f, c, ol, lw, rng) -> None:
    d.line(f.poly((0.5, 0.04), (0.5, 0.66)), fill=BROWN, width=f.lw(0.035))
    sail = (240, 228, 170, 255) if c[:3] == COLORS["white"] else (248, 248, 240, 255)
    d.polygon(f.poly((0.53, 0.04), (0.53, 0.6), (0.9, 0.6)), fill=sail, outline=ol)
    d.polygon(f.poly((0.47, 0.16), (0.47, 0.6), (0.18, 0.6)), fill=sail, outline=ol)
    d.polygon(f.poly((0.0, 0.64), (1.0, 0.64), (0.82, 1.0), (0.18, 1.0)), fill=c, outline=ol, width=lw)
    d.line(f.poly((0.08, 0.74), (0.92, 0.74)), fill=_shade(c[:3], 0.6), width=f.lw(0.02))


def _draw_car(d, f, c, ol, lw, rng) -> None:
    d.polygon(f.poly((0.18, 0.42), (0.3, 0.05), (0.7, 0.05), (0.84, 0.42)), fill=c, outline=ol, width=lw)
    d.rounded_rectangle(f.box(0.0, 0.36, 1.0, 0.8), radius=max(1, f.h * 0.08), fill=c, outline=ol, width=lw)
    glass = (170, 215, 240, 255)
    d.polygon(f.poly((0.26, 0.38), (0.34, 0.13), (0.49, 0.13), (0.49, 0.38)), fill=glass)
    d.polygon(f.poly((0.52, 0.38), (0.52, 0.13), (0.67, 0.13), (0.76, 0.38)), fill=glass)
    d.rectangle(f.box(0.93, 0.44, 0.99, 0.54), fill=(255, 235, 120, 255))
    for u in (0.25, 0.75):
        d.ellipse(f.box(u - 0.1, 0.6, u + 0.1, 1.0), fill=(20, 20, 20, 255), outline=(90, 90, 90, 255))
        d.ellipse(f.box(u - 0.04, 0.72, u + 0.04, 0.88), fill=(150, 150, 150, 255))


def _draw_cat(d, f, c, ol, lw, rng) -> None:
    d.line(f.poly((0.14, 0.75), (0.04, 0.5), (0.08, 0.22)), fill=c, width=f.lw(0.05), joint="curve")
    for u in (0.2, 0.5):
        d.rectangle(f.box(u, 0.82, u + 0.08, 1.0), fill=c, outline=ol)
    d.ellipse(f.box(0.08, 0.44, 0.72, 0.94), fill=c, outline=ol, width=lw)
    d.polygon(f.poly((0.58, 0.34), (0.61, 0.04), (0.73, 0.24)), fill=c, outline=ol)
    d.polygon(f.poly((0.79, 0.24), (0.9, 0.04), (0.94, 0.34)), fill=c, outline=ol)
    d.ellipse(f.box(0.55, 0.18, 0.96, 0.66), fill=c, outline=ol, width=lw)
    eye = (250, 215, 40, 255) if c[:3] != COLORS["yellow"] else (40, 165, 55, 255)
    d.ellipse(f.box(0.65, 0.33, 0.72, 0.43), fill=eye)
    d.ellipse(f.box(0.8, 0.33, 0.87, 0.43), fill=eye)
    d.polygon(f.poly((0.74, 0.47), (0.8, 0.47), (0.77, 0.52)), fill=(240, 130, 150, 255))


def _draw_dog(d, f, c, ol, lw, rng) -> None:
    d.line(f.poly((0.12, 0.44), (0.03, 0.14)), fill=c, width=f.lw(0.04))
    for u in (0.14, 0.3, 0.54, 0.68):
        d.rectangle(f.box(u, 0.62, u + 0.08, 1.0), fill=c, outline=ol)
    d.rounded_rectangle(f.box(0.08, 0.34, 0.8, 0.72), radius=max(1, f.h * 0.1), fill=c, outline=ol, width=lw)
    d.rounded_rectangle(f.box(0.64, 0.06, 0.9, 0.44), radius=max(1, f.h * 0.06), fill=c, outline=ol, width=lw)
    d.rectangle(f.box(0.86, 0.22, 1.0, 0.4), fill=c, outline=ol)
    d.ellipse(f.box(0.94, 0.21, 1.0, 0.29), fill=DARK if sum(c[:3]) > 120 else (230, 230, 230, 255))
    d.ellipse(f.box(0.63, 0.08, 0.74, 0.46), fill=_shade(c[:3], 0.6), outline=ol)
    d.ellipse(f.box(0.79, 0.14, 0.84, 0.21), fill=DARK if sum(c[:3]) > 120 else (230, 230, 230, 255))


def _draw_flower(d, f, c, ol, lw, rng) -> None:
    d.line(f.poly((0.5, 0.35), (0.5, 1.0)), fill=LEAF, width=f.lw(0.05))
    d.ellipse(f.box(0.14, 0.6, 0.5, 0.7), fill=LEAF)
    d.ellipse(f.box(0.5, 0.74, 0.86, 0.84), fill=LEAF)
    # petals around a centre, in pixel space (the frame is not square)
    cx, cy = f.p(0.5, 0.0)
    cy += 0.5 * f.w
    ring, petal = 0.26 * f.w, 0.2 * f.w
    count = 6
    for k in range(count):
        angle = 2 * math.pi * k / count
        px, py = cx + ring * math.cos(angle), cy + ring * math.sin(angle)
        d.ellipse([px - petal, py - petal, px + petal, py + petal], fill=c, outline=ol)
    heart = (120, 70, 30, 255) if c[:3] in (COLORS["yellow"], COLORS["orange"]) else (250, 210, 40, 255)
    r = 0.16 * f.w
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=heart, outline=ol)


def _draw_tree(d, f, c, ol, lw, rng) -> None:
    if rng.random() < 0.5:  # round crown
        d.rectangle(f.box(0.41, 0.55, 0.59, 1.0), fill=BROWN, outline=ol)
        for box in ((0.02, 0.24, 0.56, 0.72), (0.44, 0.24, 0.98, 0.72), (0.18, 0.0, 0.82, 0.5)):
            d.ellipse(f.box(*box), fill=c, outline=ol, width=lw)
    else:  # pine
        d.rectangle(f.box(0.42, 0.7, 0.58, 1.0), fill=BROWN, outline=ol)
        for top, bottom, half in ((0.0, 0.36, 0.34), (0.16, 0.56, 0.44), (0.32, 0.76, 0.5)):
            d.polygon(f.poly((0.5, top), (0.5 - half, bottom), (0.5 + half, bottom)), fill=c, outline=ol, width=lw)


DRAWERS = {
    "ball": _draw_ball, "bird": _draw_bird, "boat": _draw_boat, "car": _draw_car,
    "cat": _draw_cat, "dog": _draw_dog, "flower": _draw_flower, "tree": _draw_tree,
}


# --------------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------------


def _vertical(top, bottom, rows: int, width: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, rows)[:, None, None]
    band = (1 - t) * np.asarray(top, float) + t * np.asarray(bottom, float)
    return np.broadcast_to(band, (rows, width, 3)).copy()


def _background(kind: str, width: int, height: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray], int | None]:
    """Pixels (float h, w, 3), region masks, and the horizon row (None without one)."""
    img = np.zeros((height, width, 3), float)
    regions: dict[str, np.ndarray] = {}
    horizon = None
    rows = np.arange(height)[:, None]
    if kind in ("sky_grass", "sky_water", "road"):
        horizon = int(height * rng.uniform(0.35, 0.55))
        sky_top = np.array([95, 155, 230]) + rng.integers(-15, 16, 3)
        img[:horizon] = _vertical(sky_top, [185, 215, 245], horizon, width)
        regions["sky"] = np.broadcast_to(rows < horizon, (height, width))
        ground = height - horizon
        if kind == "sky_water":
            base = np.array([30, 95, 165]) + rng.integers(-10, 11, 3)
            water = _vertical(base + 25, base - 15, ground, width)
            y, x = np.mgrid[0:ground, 0:width]
            waves = np.sin(x / rng.uniform(6, 12) + y * 0.9 + rng.uniform(0, 6)) > 0.93
            water[waves] += 45
            img[horizon:] = water
            regions["water"] = np.broadcast_to(rows >= horizon, (height, width))
        else:
            base = np.array([70, 150, 55]) + rng.integers(-12, 13, 3)
            img[horizon:] = _vertical(base + 15, base - 20, ground, width) + rng.normal(0, 9, (ground, width, 1))
            road_top = height
            if kind == "road":
                road_top = horizon + int(ground * rng.uniform(0.45, 0.6))
                img[road_top:] = (105, 105, 110) + rng.normal(0, 4, (height - road_top, width, 1))
                middle = (road_top + height) // 2
                dash = max(8, width // 12)
                for x0 in range(int(rng.integers(0, dash)), width, 2 * dash):
                    img[middle - 1 : middle + 2, x0 : x0 + dash] = (235, 235, 225)
                regions["road"] = np.broadcast_to(rows >= road_top, (height, width))
            regions["grass"] = np.broadcast_to((rows >= horizon) & (rows < road_top), (height, width))
    elif kind == "gradient":
        a, b = rng.uniform(70, 200, 3), rng.uniform(70, 200, 3)
        angle = rng.uniform(0, 2 * math.pi)
        y, x = np.mgrid[0:height, 0:width]
        t = (x * math.cos(angle) + y * math.sin(angle)).astype(float)
        t = (t - t.min()) / max(t.max() - t.min(), 1.0)
        img = (1 - t)[..., None] * a + t[..., None] * b
    elif kind == "noise":
        coarse = rng.uniform(70, 200, (int(rng.integers(3, 7)), int(rng.integers(3, 7)), 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse, "RGB").resize((width, height), Image.BILINEAR), float)
        img += rng.normal(0, 6, (height, width, 1))
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    return img, {label: np.ascontiguousarray(mask) for label, mask in regions.items()}, horizon


# --------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------


@dataclass
class _Spec:
    kind: str
    color: str
    size: str
    scale: float
    flipped: bool
    required: bool = False


def _choose_specs(rng: np.random.Generator, n: int, require: Sequence[str], exclude: set[str], unique: set[str]) -> list[_Spec]:
    allowed = [k for k in OBJECT_KINDS if k not in exclude]
    kinds = list(require)
    while len(kinds) < n:
        repeatable = [k for k in kinds if k not in unique]
        if repeatable and rng.random() < 0.35:
            kinds.append(repeatable[int(rng.integers(len(repeatable)))])
        else:
            choices = [k for k in allowed if not (k in unique and k in kinds)]
            if not choices:
                break
            kinds.append(choices[int(rng.integers(len(choices)))])
    specs: list[_Spec] = []
    for index, kind in enumerate(kinds):
        palette = KIND_COLORS.get(kind, tuple(COLORS))
        earlier = [s.color for s in specs if s.kind == kind]
        color = earlier[0] if earlier and rng.random() < 0.5 else palette[int(rng.integers(len(palette)))]
        size = ("small", "medium", "large")[int(rng.choice(3, p=[0.35, 0.4, 0.25]))]
        lo, hi = SIZES[size]
        specs.append(_Spec(kind, color, size, float(rng.uniform(lo, hi)), bool(rng.random() < 0.5), index < len(require)))
    order = rng.permutation(len(specs))
    return [specs[i] for i in order]


def _render_object(spec: _Spec, width: int, height: int, horizon: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Places and draws one object on a transparent layer: (rgb uint8 (h, w, 3), mask bool (h, w))."""
    longest = spec.scale * min(width, height)
    aspect = ASPECTS[spec.kind]
    w, h = (longest, longest / aspect) if aspect >= 1 else (longest * aspect, longest)
    margin = 3
    x = rng.uniform(margin, width - w - margin)
    if horizon is not None and spec.kind != "bird":  # things stand on the ground
        low = max(horizon + 0.15 * (height - horizon), h + margin)
        bottom = rng.uniform(min(low, height - margin), height - margin)
        y = bottom - h
    else:
        y = rng.uniform(margin, height - h - margin)
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    rgb = np.clip(np.asarray(COLORS[spec.color]) + rng.integers(-12, 13, 3), 0, 255)
    color = _rgba(rgb)
    outline = (150, 150, 150, 255) if spec.color == "black" else DARK
    frame = _Frame(x, y, w, h, spec.flipped)
    DRAWERS[spec.kind](draw, frame, color, outline, frame.lw(0.018), rng)
    array = np.asarray(layer)
    return array[..., :3], array[..., 3] > 0


def make_scene(
    seed: int,
    *,
    n_objects: int | None = None,
    require: Sequence[str] = (),
    exclude: Iterable[str] = (),
    unique: Iterable[str] = (),
    background: str | None = None,
    size: tuple[int, int] | None = None,
) -> Scene:
    """A scene drawn from `seed`.

    require: kinds that must appear (once each, or more if listed more often); exclude: kinds that must
    not; unique: kinds that may appear at most once (e.g. the source of a sound). n_objects: 1-5 drawn
    from the seed when None.
    """
    rng = np.random.default_rng(seed)
    exclude, unique = set(exclude), set(unique)
    for kind in (*require, *exclude, *unique):
        if kind not in OBJECT_KINDS:
            raise ValueError(f"unknown object kind {kind!r}; expected one of {OBJECT_KINDS}")
    if set(require) & exclude:
        raise ValueError(f"kinds both required and excluded: {sorted(set(require) & exclude)}")
    width, height = size if size is not None else IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    background = background if background is not None else BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    pixels, region_masks, horizon = _background(background, width, height, rng)
    n = n_objects if n_objects is not None else 1 + int(rng.choice(5, p=[0.2, 0.3, 0.25, 0.15, 0.1]))
    n = max(n, len(require))
    specs = _choose_specs(rng, n, require, exclude, unique)

    # Place everything, then check that every object stays visible enough; otherwise place again
    # (after many failures, drop an optional object: required ones are never dropped).
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for attempt in range(60):
        if attempt and attempt % 15 == 0:
            optional = [i for i, spec in enumerate(specs) if not spec.required]
            if optional and len(specs) > 1:
                specs.pop(optional[-1])
        layers = [_render_object(spec, width, height, horizon, rng) for spec in specs]
        covered = np.zeros((height, width), bool)
        ok = True
        for _, mask in reversed(layers):
            visible = mask & ~covered
            if visible.sum() < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE * mask.sum()):
                ok = False
                break
            covered |= mask
        if ok:
            break
    else:
        raise RuntimeError(f"scene {seed}: could not place {len(specs)} objects visibly")

    full_masks = [mask for _, mask in layers]
    later = np.zeros((height, width), bool)
    visibles: list[np.ndarray] = [np.zeros(0)] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        visibles[i] = full_masks[i] & ~later
        later |= full_masks[i]
    for rgb, mask in layers:
        pixels[mask] = rgb[mask]
    objects = []
    for i, spec in enumerate(specs):
        area = int(full_masks[i].sum())
        hidden_by = tuple(
            j for j in range(i + 1, len(specs)) if (full_masks[i] & full_masks[j]).sum() >= max(1, OCCLUSION_MIN * area)
        )
        objects.append(SceneObject(
            kind=spec.kind, color=spec.color, size=spec.size, box=tight_box(full_masks[i]),  # type: ignore[arg-type]
            mask=visibles[i], area=area, occluded_by=hidden_by, flipped=spec.flipped, full_mask=full_masks[i],
        ))
    regions = []
    for label, mask in region_masks.items():
        visible = mask & ~later
        if visible.sum() >= 0.01 * width * height:
            regions.append(Region(label, visible))
    image = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return Scene(seed=seed, width=width, height=height, background=background, objects=objects, regions=regions, pixels=image)
