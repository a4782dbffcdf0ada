"""The official RAM checkpoint (`ram_swin_large_14m.pth`): key map, reading and strict loading.

Module names under `visual_encoder` mirror the official ones, so that part of the key map is the
identity; the tagging head uses our names (q_proj, ..., as in `bubogpt.qformer`) through a rename
table. The Tag2Text captioning branch and the recomputed Swin buffers are skipped (`RAM_IGNORED`).
Reading and the strict copy are the shared ones of `bubogpt.official_checkpoints`.
"""

from __future__ import annotations

from typing import Any

from bubogpt.grounding.ram.config import RamConfig
from bubogpt.grounding.ram.tagger import RamTagger
from bubogpt.official_checkpoints import (
    Checkpoint,
    CheckpointError,
    IgnoreRule,
    LoadReport,
    apply_key_map,
    read_state,
)


class RamCheckpointError(CheckpointError):
    """A RAM checkpoint that does not match the tagger; the message names every offending key."""


RamLoadReport = LoadReport  # what the loader did; shared with the other official loaders


# The official loader (`load_checkpoint_swinlarge`) renames this legacy prefix; so do we.
LEGACY_PREFIXES = {"vision_multi.": "tagging_head."}

RAM_IGNORED: tuple[IgnoreRule, ...] = (
    (r"tag_encoder\..+", "Tag2Text image-tag interaction encoder: captioning only (its first 2 layers are "
     "tied to tagging_head, whose own copies we load)"),
    (r"text_decoder\..+", "Tag2Text caption decoder: BuboGPT never captions with RAM"),
    (r"visual_encoder\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index",
     "buffer derived from the window size: recomputed (the official loader deletes it too)"),
    (r"visual_encoder\.layers\.\d+\.blocks\.\d+\.attn_mask",
     "shifted-window mask buffer: recomputed (the official loader deletes it too)"),
    # Defensive: RAM deletes these modules before its state dict is taken, so a released file should
    # not hold them; if one does, RAM's forward never reads them either.
    (r"tagging_head\.embeddings\..+", "tagging head embeddings: deleted by RAM (labels are fed as embeddings)"),
    (r"tagging_head\.encoder\.layer\.\d+\.attention\..+", "tagging head self-attention: deleted by RAM"),
)  # fmt: skip

# Official BERT names inside `tagging_head.encoder.layer.{i}.` -> ours inside `tagging_head.layers.{i}.`
_TAGGING_LAYER_RENAMES = (
    ("crossattention.self.query", "cross_attn.q_proj"),
    ("crossattention.self.key", "cross_attn.k_proj"),
    ("crossattention.self.value", "cross_attn.v_proj"),
    ("crossattention.output.dense", "cross_attn.out_proj"),
    ("crossattention.output.LayerNorm", "cross_attn.norm"),
    ("intermediate.dense", "mlp.fc1"),
    ("output.dense", "mlp.fc2"),
    ("output.LayerNorm", "mlp.norm"),
)
_SWIN_BLOCK_TENSORS = (
    "norm1.weight", "norm1.bias",
    "attn.relative_position_bias_table",
    "attn.qkv.weight", "attn.qkv.bias",
    "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias",
    "mlp.fc1.weight", "mlp.fc1.bias",
    "mlp.fc2.weight", "mlp.fc2.bias",
)  # fmt: skip


def ram_key_map(cfg: RamConfig) -> dict[str, str]:
    """{official key: our parameter name} for every tensor the tagger needs, built from the config."""
    key_map: dict[str, str] = {}

    def same(*names: str) -> None:
        key_map.update({name: name for name in names})

    same("visual_encoder.patch_embed.proj.weight", "visual_encoder.patch_embed.proj.bias")
    same("visual_encoder.patch_embed.norm.weight", "visual_encoder.patch_embed.norm.bias")
    for stage, depth in enumerate(cfg.depths):
        for block in range(depth):
            same(*(f"visual_encoder.layers.{stage}.blocks.{block}.{t}" for t in _SWIN_BLOCK_TENSORS))
        if stage < len(cfg.depths) - 1:
            prefix = f"visual_encoder.layers.{stage}.downsample"
            same(f"{prefix}.reduction.weight", f"{prefix}.norm.weight", f"{prefix}.norm.bias")
    same("visual_encoder.norm.weight", "visual_encoder.norm.bias")
    same("image_proj.weight", "image_proj.bias", "label_embed")
    if cfg.head_hidden != cfg.joint_dim:  # else wordvec_proj is an Identity without weights
        same("wordvec_proj.weight", "wordvec_proj.bias")
    for layer in range(cfg.head_layers):
        for official, ours in _TAGGING_LAYER_RENAMES:
            for kind in ("weight", "bias"):
                source = f"tagging_head.encoder.layer.{layer}.{official}.{kind}"
                key_map[source] = f"tagging_head.layers.{layer}.{ours}.{kind}"
    same("fc.weight", "fc.bias")
    return key_map


def load_ram_checkpoint(model: RamTagger, checkpoint: Checkpoint, *, allow_pickle: bool = False) -> RamLoadReport:
    """Load the official RAM weights into `model` through `ram_key_map`, strictly.

    Accepts `{"model": state, ...}` (the released layout) or a flat state dict, as a path or in memory.
    Fails with RamCheckpointError (nothing copied) listing: missing (our tensors the file does not
    fill), unexpected (official keys neither mapped nor matched by RAM_IGNORED), mis-shaped (usually
    the wrong preset; unlike the official loader we do not interpolate relative position tables).
    Tensors are cast to the parameter dtype.
    """
    source, raw = read_state(checkpoint, "ram_swin_large_14m.pth", layout="either", allow_pickle=allow_pickle)
    state: dict[str, Any] = {}
    for key, value in raw.items():
        for old, new in LEGACY_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        state[key] = value
    # our buffers are all non-persistent, so the tagger's state dict is its parameters: all from the file
    return apply_key_map(
        state, ram_key_map(model.config), {"": model}, RAM_IGNORED, source=source, error=RamCheckpointError
    )
