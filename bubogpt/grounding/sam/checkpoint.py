"""Official SAM checkpoints (`sam_vit_{h,l,b}_*.pth`): key maps, reading and strict loading.

Our names equal the official ones below `image_encoder.` and `mask_decoder.`; the prompt encoder keeps
only what box prompts use, so its key map renames the two box-corner embeddings and `SAM_IGNORED_KEYS`
lists the point and mask prompt tensors we do not load. Reading and the strict copy are the shared ones
of `bubogpt.official_checkpoints`.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from bubogpt.grounding.sam.config import SamConfig
from bubogpt.grounding.sam.image_encoder import SamImageEncoder
from bubogpt.grounding.sam.prompt_decoder import SamPromptDecoder
from bubogpt.official_checkpoints import Checkpoint, CheckpointError, LoadReport, apply_key_map, read_state

# Official keys we do not load, with the reason (exact names; the mask-prompt path has the same
# names in every official file).
SAM_IGNORED_KEYS: dict[str, str] = {
    "prompt_encoder.point_embeddings.0.weight": "negative point prompt: we take boxes only",
    "prompt_encoder.point_embeddings.1.weight": "positive point prompt: we take boxes only",
    "prompt_encoder.not_a_point_embed.weight": "padding point: used for point prompts without a box only",
    **{
        f"prompt_encoder.mask_downscaling.{i}.{p}": "mask prompt path: not used with box prompts"
        for i in (0, 1, 3, 4, 6)
        for p in ("weight", "bias")
    },
}
# Buffers that may be in a file (the official Sam registers them non-persistent, so released files
# should not have them); they are constants of our preprocessing, so a file that has them must agree
# exactly.
SAM_CHECKED_CONSTANTS: tuple[str, ...] = ("pixel_mean", "pixel_std")


class SamCheckpointError(CheckpointError):
    """A SAM checkpoint does not match the networks; the message lists the offending names."""


SamLoadReport = LoadReport  # what the loader did; shared with the other official loaders


def _image_encoder_names(cfg: SamConfig) -> list[str]:
    names = ["patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed"]
    for i in range(cfg.encoder_depth):
        names += [
            f"blocks.{i}.{t}"
            for t in (
                "norm1.weight", "norm1.bias",
                "attn.rel_pos_h", "attn.rel_pos_w",
                "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                "norm2.weight", "norm2.bias",
                "mlp.lin1.weight", "mlp.lin1.bias", "mlp.lin2.weight", "mlp.lin2.bias",
            )
        ]
    names += ["neck.0.weight", "neck.1.weight", "neck.1.bias", "neck.2.weight", "neck.3.weight", "neck.3.bias"]
    return names


def _mask_decoder_names(cfg: SamConfig) -> list[str]:
    def attention(prefix: str) -> list[str]:
        return [f"{prefix}.{p}.{t}" for p in ("q_proj", "k_proj", "v_proj", "out_proj") for t in ("weight", "bias")]

    def linear_stack(prefix: str, n: int) -> list[str]:
        return [f"{prefix}.layers.{i}.{t}" for i in range(n) for t in ("weight", "bias")]

    names: list[str] = []
    for i in range(cfg.decoder_depth):
        layer = f"transformer.layers.{i}"
        names += attention(f"{layer}.self_attn") + attention(f"{layer}.cross_attn_token_to_image")
        names += attention(f"{layer}.cross_attn_image_to_token")
        names += [f"{layer}.mlp.{p}.{t}" for p in ("lin1", "lin2") for t in ("weight", "bias")]
        names += [f"{layer}.norm{n}.{t}" for n in (1, 2, 3, 4) for t in ("weight", "bias")]
    names += attention("transformer.final_attn_token_to_image")
    names += ["transformer.norm_final_attn.weight", "transformer.norm_final_attn.bias"]
    names += ["iou_token.weight", "mask_tokens.weight"]
    names += [f"output_upscaling.{i}.{t}" for i in (0, 1, 3) for t in ("weight", "bias")]
    for j in range(cfg.num_mask_tokens):
        names += linear_stack(f"output_hypernetworks_mlps.{j}", 3)
    names += linear_stack("iou_prediction_head", cfg.iou_head_depth)
    return names


def image_encoder_key_map(cfg: SamConfig) -> dict[str, str]:
    """Official key -> `SamImageEncoder` name: identity below the `image_encoder.` prefix."""
    return {f"image_encoder.{name}": name for name in _image_encoder_names(cfg)}


def prompt_decoder_key_map(cfg: SamConfig) -> dict[str, str]:
    """Official key -> `SamPromptDecoder` name: identity, except the box-corner point embeddings."""
    key_map = {
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
        ),
        "prompt_encoder.point_embeddings.2.weight": "prompt_encoder.box_corner_embeddings.0.weight",
        "prompt_encoder.point_embeddings.3.weight": "prompt_encoder.box_corner_embeddings.1.weight",
        "prompt_encoder.no_mask_embed.weight": "prompt_encoder.no_mask_embed.weight",
    }
    key_map.update({f"mask_decoder.{name}": f"mask_decoder.{name}" for name in _mask_decoder_names(cfg)})
    return key_map


def sam_key_map(cfg: SamConfig) -> dict[str, str]:
    """Official key -> "image_encoder.<ours>" / "prompt_decoder.<ours>", for the whole file."""
    key_map = {src: f"image_encoder.{dst}" for src, dst in image_encoder_key_map(cfg).items()}
    key_map.update({src: f"prompt_decoder.{dst}" for src, dst in prompt_decoder_key_map(cfg).items()})
    return key_map


def load_sam_checkpoint(
    image_encoder: SamImageEncoder | None,
    prompt_decoder: SamPromptDecoder | None,
    checkpoint: Checkpoint,
    *,
    allow_pickle: bool = False,
) -> SamLoadReport:
    """Fill our SAM networks from an official file (`sam_vit_{h,l,b}_*.pth`, a flat state dict) or its dict.

    Strict: raises SamCheckpointError listing missing (ours, not filled), unexpected (official keys
    neither mapped nor in SAM_IGNORED_KEYS), mis-shaped and inconsistent (pixel constants) keys;
    nothing is copied unless all match. Pass None for a network to load only the other one (its
    official keys are then skipped, logged).
    """
    if image_encoder is None and prompt_decoder is None:
        raise ValueError("load_sam_checkpoint: give an image encoder, a prompt decoder or both")
    source, state = read_state(checkpoint, "sam_vit_h_4b8939.pth", layout="flat", allow_pickle=allow_pickle)

    key_map: dict[str, str] = {}
    targets: dict[str, nn.Module] = {}
    ignore = [(re.escape(key), why) for key, why in SAM_IGNORED_KEYS.items()]
    if image_encoder is not None:
        targets["image_encoder"] = image_encoder
        key_map.update({s: f"image_encoder.{d}" for s, d in image_encoder_key_map(image_encoder.config).items()})
    else:
        ignore.append((r"image_encoder\..+", "image encoder not requested"))
    if prompt_decoder is not None:
        targets["prompt_decoder"] = prompt_decoder
        key_map.update({s: f"prompt_decoder.{d}" for s, d in prompt_decoder_key_map(prompt_decoder.config).items()})
    else:
        ignore.append((r"(prompt_encoder|mask_decoder)\..+", "prompt decoder not requested"))
    cfg = image_encoder.config if image_encoder is not None else prompt_decoder.config
    # The official Sam registers them as shape [3, 1, 1] buffers.
    checks = {name: torch.tensor(getattr(cfg, name), dtype=torch.float32).view(-1, 1, 1) for name in SAM_CHECKED_CONSTANTS}
    return apply_key_map(state, key_map, targets, ignore, source=source, checks=checks, error=SamCheckpointError)
