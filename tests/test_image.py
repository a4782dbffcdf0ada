import io

import numpy as np
import pytest
import torch
from PIL import Image

from bubogpt.config import VisionEncoderConfig
from bubogpt.image import ImageDecodeError, decode_image, image_bytes_to_pixels, preprocess_for_encoder
from conftest import make_image_bytes

CFG = VisionEncoderConfig()


def _png(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def test_preprocess_matches_resize_crop_normalise_by_hand():
    image = decode_image(make_image_bytes(320, 240))
    pixels = preprocess_for_encoder(image, CFG)
    assert pixels.shape == (3, 224, 224)
    # by hand: short side 240 -> 224, long side int(224 * 320 / 240) = 298, crop left round(74 / 2) = 37
    resized = np.asarray(image.resize((298, 224), Image.BICUBIC), dtype=np.float32)[:, 37 : 37 + 224] / 255.0
    expected = (resized - np.array(CFG.pixel_mean, dtype=np.float32)) / np.array(CFG.pixel_std, dtype=np.float32)
    assert torch.allclose(pixels, torch.from_numpy(expected.transpose(2, 0, 1)), atol=1e-6)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_common_formats_decode(fmt):
    assert image_bytes_to_pixels(make_image_bytes(fmt=fmt), CFG).shape == (3, 224, 224)


def test_cmyk_greyscale_16bit_and_alpha_become_rgb():
    cmyk = Image.new("CMYK", (40, 30), (0, 255, 255, 0))  # pure red in CMYK
    assert decode_image(_jpeg(cmyk)).getpixel((5, 5))[0] > 200
    grey16 = Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16))
    assert decode_image(_png(grey16)).getpixel((0, 0)) == (255, 255, 255)
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # fully transparent -> white background
    assert decode_image(_png(rgba)).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (10, 10))
    assert decode_image(_png(palette)).mode == "RGB"


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).size == (20, 60)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"not an image at all" * 10, "could not be decoded"),
        (make_image_bytes(fmt="PNG")[:200], "could not be decoded"),
        (make_image_bytes(fmt="JPEG")[:300], "could not be decoded"),
    ],
)
def test_bad_bytes_get_clear_errors(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data)


def test_pixel_limit():
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(make_image_bytes(400, 300), max_pixels=100_000)
