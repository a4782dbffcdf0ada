"""Tag vocabulary, per-tag thresholds and tag selection (thresholding stays outside the network).

The official 4585 tags (`ram_tag_list.txt`) and per-tag thresholds (`ram_tag_list_threshold.txt`) are
files the user has next to the checkpoint; `load_tag_list` and `load_thresholds` read them. Nothing is
downloaded. The `tiny` preset carries its own 24 tags (`config.TINY_TAG_LIST`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from bubogpt.grounding.ram.config import RamConfig


def load_tag_list(path: str | os.PathLike) -> list[str]:
    """`ram_tag_list.txt`: one tag per line, line i = tag index i (RAM reads it with splitlines)."""
    with open(path, encoding="utf-8") as f:
        tags = f.read().splitlines()
    empty = [i for i, tag in enumerate(tags) if not tag.strip()]
    if empty:
        raise ValueError(f"{path}: empty tag on line(s) {[i + 1 for i in empty[:10]]}")
    return tags


def load_thresholds(
    path: str | os.PathLike, num_tags: int | None = None, default: float = RamConfig.default_threshold
) -> torch.Tensor:
    """`ram_tag_list_threshold.txt`: one float per line, line i = threshold of tag i.

    With `num_tags`, applies RAM's rule: every tag starts at `default` (0.68) and the file overrides the
    first len(file) of them; a file with more lines than tags is an error (RAM would index out of range).
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():  # tolerate trailing blank lines only
        lines.pop()
    try:
        values = [float(line) for line in lines]
    except ValueError as err:
        raise ValueError(f"{path}: not one float per line ({err})") from None
    if num_tags is None:
        return torch.tensor(values, dtype=torch.float32)
    return class_thresholds(values, num_tags, default, source=os.fspath(path))


def class_thresholds(
    per_tag: Sequence[float], num_tags: int, default: float = RamConfig.default_threshold, source: str = "thresholds"
) -> torch.Tensor:
    """RAM's `class_threshold`: `default` everywhere, overridden by `per_tag` from index 0 on."""
    if len(per_tag) > num_tags:
        raise ValueError(f"{source}: {len(per_tag)} thresholds for {num_tags} tags")
    thresholds = torch.full((num_tags,), float(default), dtype=torch.float32)
    thresholds[: len(per_tag)] = torch.tensor(list(per_tag), dtype=torch.float32)
    return thresholds


def select_tags(
    probs: torch.Tensor | np.ndarray,
    thresholds: torch.Tensor | np.ndarray | Sequence[float],
    tag_list: Sequence[str],
    deleted_indices: Sequence[int] = (),
) -> list[str]:
    """One image's probabilities [num_tags] -> its tags, in tag-index order (as RAM's generate_tag).

    A tag is selected when prob > threshold (strictly, in float32 as RAM compares on the model's
    device) and its index is not deleted. BuboGPT's demo joins the result with " | "; we return a list.
    """
    p = torch.as_tensor(probs, dtype=torch.float32).detach().cpu()
    t = torch.as_tensor(thresholds, dtype=torch.float32).cpu()
    if p.ndim != 1:
        raise ValueError(f"probs must be one image's [num_tags] vector, got shape {tuple(p.shape)}")
    if not (p.shape[0] == t.numel() == len(tag_list)):
        raise ValueError(f"sizes differ: {p.shape[0]} probabilities, {t.numel()} thresholds, {len(tag_list)} tags")
    selected = p > t.reshape(-1)
    if len(deleted_indices):
        selected[torch.as_tensor(list(deleted_indices), dtype=torch.long)] = False
    return [tag_list[i] for i in torch.nonzero(selected).flatten().tolist()]
