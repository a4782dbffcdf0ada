"""Loading the official `groundingdino_swint_ogc.pth` into `GroundingDino`, by an explicit key map.

The file is `{"model": state_dict, ...}` (the official `load_model` reads checkpoint["model"] and strips
a leading "module." with `clean_state_dict`; so do we). Unlike the official `strict=False` load, ours
is strict: a load fails with `GroundingDinoCheckpointError` (a ValueError) listing every
  - missing key: a tensor of ours that the file does not fill,
  - unexpected key: a file key that is neither mapped nor in the documented lists below,
  - mis-shaped key: file and model shapes differ (usually the wrong preset or text encoder config),
  - inconsistent key: a checked buffer or alias whose value is not what the official model implies.
Nothing is copied unless the whole file checks out. Tensors are cast to our parameters' dtype.

Key map (official -> ours): our modules carry the official names, so it is the identity except
    backbone.0.<rest>    -> backbone.<rest>      (the official Joiner: [0] Swin, [1] position embedding)
    bbox_embed.0.<rest>  -> bbox_embed.<rest>    (one MLP shared by all decoder layers, stored once)

Keys read but not loaded (`GDINO_IGNORED`, `checked_keys`):
    bert.pooler.dense.*                       BERT pooler; the official wrapper computes it, nothing uses it
    bert.embeddings.token_type_ids            HF buffer (zeros) that some transformers versions save
    bert.embeddings.position_ids              HF buffer; must equal arange(max_positions)
    backbone.0.layers.*.blocks.*.attn.relative_position_index
                                              Swin buffer; must equal the index we compute
    bbox_embed.K.*  (K >= 1), transformer.decoder.bbox_embed.K.*
                                              the shared box MLP seen under its other module paths
                                              (nn.Module.state_dict lists shared modules once per
                                              path); must equal bbox_embed.0.*
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import torch

from bubogpt.grounding.grounding_dino.model import GroundingDino
from bubogpt.grounding.swin import relative_position_index
from bubogpt.official_checkpoints import CheckpointError, LoadReport

log = logging.getLogger(__name__)

Checkpoint = Union[str, os.PathLike, Mapping[str, Any]]

# (regex over the official key, full match; why it is skipped)
GDINO_IGNORED: tuple[tuple[str, str], ...] = (
    (r"bert\.pooler\.dense\.(weight|bias)", "BERT pooler output is never used by Grounding DINO"),
    (r"bert\.embeddings\.token_type_ids", "Hugging Face buffer of zeros, not a weight"),
)


class GroundingDinoCheckpointError(CheckpointError):
    """A checkpoint does not match the Grounding DINO it is loaded into; the message names the keys."""


@dataclass
class GroundingDinoLoadReport(LoadReport):
    checked: list[str] = field(default_factory=list)  # buffers and aliases verified, not loaded


def official_name(ours: str) -> str:
    """Our state-dict name -> the official checkpoint key."""
    for prefix, official in (("backbone.", "backbone.0."), ("bbox_embed.", "bbox_embed.0.")):
        if ours.startswith(prefix):
            return official + ours[len(prefix) :]
    return ours


def grounding_dino_key_map(model: GroundingDino) -> dict[str, str]:
    """{official key: our state-dict name} for every tensor of ours."""
    return {official_name(name): name for name in model.state_dict()}


def checked_keys(model: GroundingDino) -> dict[str, torch.Tensor | str]:
    """Official keys verified but not loaded: expected value, or the official key they must equal."""
    cfg = model.config
    checks: dict[str, torch.Tensor | str] = {
        "bert.embeddings.position_ids": torch.arange(cfg.text.max_positions)[None],
    }
    index = relative_position_index(cfg.swin.window_size)
    for stage, depth in enumerate(cfg.swin.depths):
        for block in range(depth):
            checks[f"backbone.0.layers.{stage}.blocks.{block}.attn.relative_position_index"] = index
    for name in model.bbox_embed.state_dict():
        for layer in range(cfg.num_decoder_layers):
            if layer:
                checks[f"bbox_embed.{layer}.{name}"] = f"bbox_embed.0.{name}"
            checks[f"transformer.decoder.bbox_embed.{layer}.{name}"] = f"bbox_embed.0.{name}"
    return checks


def read_checkpoint(path: str | os.PathLike, *, allow_pickle: bool = False) -> Any:
    """torch.load on CPU with weights_only=True; full unpickling only with allow_pickle (trusted files)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GroundingDinoCheckpointError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not allow_pickle:
            raise GroundingDinoCheckpointError(
                f"{path}: not loadable with weights_only=True ({err}); pass allow_pickle=True if you trust it"
            ) from err
        log.warning("%s: weights_only load failed (%s); unpickling fully", path, err)
        return torch.load(path, map_location="cpu", weights_only=False)


def load_grounding_dino_checkpoint(
    model: GroundingDino, checkpoint: Checkpoint, *, allow_pickle: bool = False
) -> GroundingDinoLoadReport:
    """Fill every tensor of `model` from an official checkpoint (path, {"model": state} or a flat state)."""
    if isinstance(checkpoint, (str, os.PathLike)):
        source, obj = os.fspath(checkpoint), read_checkpoint(checkpoint, allow_pickle=allow_pickle)
    elif isinstance(checkpoint, Mapping):
        source, obj = "groundingdino checkpoint (in memory)", checkpoint
    else:
        raise GroundingDinoCheckpointError(f"expected a path or a dict, got {type(checkpoint).__name__}")
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise GroundingDinoCheckpointError(f"{source}: expected a state dict, got {type(obj).__name__}")
    # the official clean_state_dict: strip a leading "module." (DistributedDataParallel)
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}

    ours = model.state_dict(keep_vars=True)
    key_map = grounding_dino_key_map(model)
    checks = checked_keys(model)
    ignore = [re.compile(pattern) for pattern, _ in GDINO_IGNORED]

    def shape_of(value: Any) -> tuple[int, ...] | None:
        return tuple(value.shape) if torch.is_tensor(value) else None

    missing = [f"{src}  (-> {dst})" for src, dst in key_map.items() if src not in state]
    unexpected = [
        k for k in state if k not in key_map and k not in checks and not any(rx.fullmatch(k) for rx in ignore)
    ]
    misshaped = [
        f"{src}: checkpoint {shape_of(state[src])} vs model {tuple(ours[dst].shape)}"
        for src, dst in key_map.items()
        if src in state and shape_of(state[src]) != tuple(ours[dst].shape)
    ]
    inconsistent = []
    for key, expected in checks.items():
        if key not in state:
            continue  # buffers and aliases carry no information of their own; absence is fine
        reference = state.get(expected) if isinstance(expected, str) else expected
        value = state[key]
        if reference is None or not torch.is_tensor(value) or value.shape != reference.shape or not torch.equal(
            value.to(reference.dtype), reference
        ):
            if isinstance(expected, str):
                what = f"must equal {expected}"
            else:
                what = "differs from the value the model computes"
            inconsistent.append(f"{key}: {what}")

    if missing or unexpected or misshaped or inconsistent:
        lines = [
            f"{source}: {len(missing)} missing, {len(unexpected)} unexpected, {len(misshaped)} mis-shaped, "
            f"{len(inconsistent)} inconsistent"
        ]
        for title, items in (
            ("missing (official keys of our tensors, absent from the file)", missing),
            ("unexpected (file keys neither mapped nor documented)", unexpected),
            ("mis-shaped (is the model built from the right preset / text encoder config?)", misshaped),
            ("inconsistent (buffers and shared-weight aliases)", inconsistent),
        ):
            if items:
                lines.append(title + ":")
                lines += [f"  {item}" for item in items]
        raise GroundingDinoCheckpointError("\n".join(lines))

    if any(t.is_meta for t in ours.values()):
        raise GroundingDinoCheckpointError(f"{source}: the model is on the meta device; build it on a real device")

    report = GroundingDinoLoadReport(source=source)
    with torch.no_grad():
        for src, dst in key_map.items():
            ours[dst].copy_(state[src].to(dtype=ours[dst].dtype))
            report.loaded[dst] = src
    report.checked = sorted(k for k in checks if k in state)
    report.ignored = sorted(k for k in state if k not in key_map and k not in checks)
    log.info(
        "%s: loaded %d tensors, checked %d buffers/aliases, ignored %d",
        source,
        len(report.loaded),
        len(report.checked),
        len(report.ignored),
    )
    return report
