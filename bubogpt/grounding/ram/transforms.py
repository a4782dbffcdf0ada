"""RAM's image preprocessing (its eval transform, without torchvision)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from bubogpt.grounding.ram.config import RamConfig
from bubogpt.image import to_rgb


def preprocess_image(image: Image.Image, cfg: RamConfig) -> torch.Tensor:
    """PIL image -> [3, S, S]: RAM's eval transform, without torchvision.

    RAM uses Resize((S, S)) + ToTensor + Normalize(ImageNet). torchvision's Resize defaults to
    BILINEAR and, on a PIL image, simply calls `PIL.Image.resize((S, S), BILINEAR)` (PIL's filter, which
    antialiases when shrinking); the aspect ratio is NOT kept. ToTensor divides by 255 in float32,
    Normalize subtracts the mean then divides by the std: the same float32 operations as below.
    Non-RGB images are converted as `bubogpt.image.to_rgb` does (alpha composited on white).
    """
    size = cfg.image_size
    resized = to_rgb(image).resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    array = (array - np.asarray(cfg.pixel_mean, dtype=np.float32)) / np.asarray(cfg.pixel_std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
