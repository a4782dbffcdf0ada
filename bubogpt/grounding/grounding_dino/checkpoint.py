"""Loading the official `groundingdino_swint_ogc.pth` into `GroundingDino`, by an explicit key map.

The file is `{"model": state_dict, ...}` (the official `load_model` reads checkpoint["model"] and strips
a leading "module." with `clean_state_dict`; so do we). Unlike the official `strict=False` load, ours
is strict: a load fails with `GroundingDinoCheckpointError` (a ValueError) listing every
  - missing key: a tensor of ours that the file does not fill,
  - unexpected key: a file key that is neither mapped nor in the documented lists below,
  - mis-shaped key: file and model shapes differ (usually the wrong preset or text encoder config),
  - inconsistent key: a checked buffer or alias whose value is not what the official model implies.
Nothing is copied unless the whole file checks out. Tensors are cast to our parameters' dtype.
Reading and the strict copy are the shared ones of `bubogpt.official_checkpoints`.

Key map (official -> ours): our modules carry the official names, so it is the identity except
    backbone.0.<rest>    -> backbone.<rest>      (the official Joiner: [0] Swin, [1] position embedding)
    bbox_embed.0.<rest>  -> bbox_embed.<rest>    (one MLP shared by all decoder layers, stored once)

Keys read but not loaded (`GDINO_IGNORED`, `checked_keys`):
    label_enc.weight                          [2001, 256] denoising label embedding of the training code;
                                              the released file has it, the open-source model does not
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

import torch

from bubogpt.grounding.grounding_dino.model import GroundingDino
from bubogpt.grounding.swin import relative_position_index
from bubogpt.official_checkpoints import (
    Checkpoint,
    CheckpointError,
    IgnoreRule,
    LoadReport,
    apply_key_map,
    read_state,
)

GDINO_IGNORED: tuple[IgnoreRule, ...] = (
    (r"bert\.pooler\.dense\.(weight|bias)", "BERT pooler output is never used by Grounding DINO"),
    (r"bert\.embeddings\.token_type_ids", "Hugging Face buffer of zeros, not a weight"),
    # The released file was saved from the training code, whose denoising queries embed noised labels
    # (dn_labelbook_size 2000 + 1 rows); the open-source model never builds it (GroundingDINO issue #271).
    (r"label_enc\.weight", "contrastive denoising label embedding [2001, 256]: training only"),
)


class GroundingDinoCheckpointError(CheckpointError):
    """A checkpoint does not match the Grounding DINO it is loaded into; the message names the keys."""


GroundingDinoLoadReport = LoadReport  # `checked` lists the buffers and aliases verified, not loaded


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


def load_grounding_dino_checkpoint(
    model: GroundingDino, checkpoint: Checkpoint, *, allow_pickle: bool = False
) -> GroundingDinoLoadReport:
    """Fill every tensor of `model` from an official checkpoint (path, {"model": state} or a flat state)."""
    source, raw = read_state(checkpoint, "groundingdino_swint_ogc.pth", layout="either", allow_pickle=allow_pickle)
    # the official clean_state_dict: strip a leading "module." (DistributedDataParallel)
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in raw.items()}
    return apply_key_map(
        state, grounding_dino_key_map(model), {"": model}, GDINO_IGNORED, source=source, checks=checked_keys(model),
        error=GroundingDinoCheckpointError,
    )
