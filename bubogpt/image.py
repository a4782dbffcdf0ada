"""Image decoding and the vision encoder's front end (BLIP-2's eval processor).

Decoding is strict: anything that is not a complete, reasonably sized image raises ImageDecodeError
with a message that says what is wrong. EXIF orientation is applied, every mode (CMYK, 16-bit,
palette, alpha) is converted to 8-bit RGB (alpha composited on white).
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import Image, ImageOps

from bubogpt.config import VisionEncoderConfig

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message says why."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes (JPEG, PNG, WebP, ...) -> 8-bit RGB PIL image, EXIF rotation applied."""
    if not data:
        raise ImageDecodeError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns (DecompressionBombWarning) before it raises; our own limit decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageDecodeError(f"image has zero size ({width}x{height})")
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
                )
            image.load()  # decode now: truncated files fail here, not later
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image is too large: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("image could not be decoded: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # PIL reports unknown formats, truncation and corrupt streams as OSError/SyntaxError.
        raise ImageDecodeError(f"image could not be decoded: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - PIL's plugins raise what they raise (struct.error, EOFError, ...) on corrupt data
        raise ImageDecodeError(f"image could not be decoded: {type(exc).__name__}: {exc}") from None
    image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparent pixels are composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits by the type's range instead of clipping.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess_for_encoder(image: Image.Image, cfg: VisionEncoderConfig):
    """RGB image -> [3, S, S] normalised torch tensor (see `preprocess_to_array`)."""
    import torch

    return torch.from_numpy(preprocess_to_array(image, cfg))


def preprocess_to_array(image: Image.Image, cfg: VisionEncoderConfig) -> np.ndarray:
    """RGB image -> [3, S, S] normalised float32 array: bicubic resize of the short side, centre crop.

    Same arithmetic as torchvision's Resize(S, BICUBIC) + CenterCrop(S) + ToTensor + Normalize on a
    PIL image, which is what BuboGPT's eval processor runs.
    """
    size = cfg.image_size
    width, height = image.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    resized = image.resize((new_w, new_h), Image.BICUBIC)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    cropped = resized.crop((left, top, left + size, top + size))
    array = np.asarray(cropped, dtype=np.float32) / 255.0
    mean = np.asarray(cfg.pixel_mean, dtype=np.float32)
    std = np.asarray(cfg.pixel_std, dtype=np.float32)
    array = (array - mean) / std
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def image_bytes_to_pixels(data: bytes, cfg: VisionEncoderConfig, max_pixels: int = DEFAULT_MAX_PIXELS):
    return preprocess_for_encoder(decode_image(data, max_pixels=max_pixels), cfg)
