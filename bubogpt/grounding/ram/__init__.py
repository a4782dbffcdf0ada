"""RAM (Recognize Anything, `ram_swin_large_14m.pth`): the image tagger in front of Grounding DINO.

BuboGPT's grounding pipeline asks RAM for the tags of an image and hands them to the detector as its
text prompt. Only RAM's tagging path runs (`RAM.generate_tag`); the Tag2Text captioning branch that
ships in the same checkpoint (`tag_encoder`, `text_decoder`) is never used and is not built here.

    image --preprocess_image--> pixels [3, S, S] --RamTagger--> probabilities [B, num_tags]
    probabilities --select_tags (prob > per-tag threshold, minus delete_tag_index)--> tags

The network is free of data-dependent Python control flow (every branch depends on the config only),
so it exports to ONNX with a dynamic batch axis. Thresholding and tag names stay outside it.

One file per job:
    config.py        RamConfig, RAM_PRESETS, the tiny preset's vocabulary and thresholds
    backbone.py      RAM's Swin (blocks and stages around the shared `bubogpt.grounding.swin` layers)
    tagging_head.py  the cross-attention-only BERT decoder over the image tokens
    tagger.py        RamTagger: backbone + projections + tagging head + per-tag classifier
    transforms.py    preprocess_image (RAM's eval transform)
    tags.py          tag list and threshold files, class_thresholds, select_tags
    checkpoint.py    ram_key_map, load_ram_checkpoint (strict, through bubogpt.official_checkpoints)
"""

from bubogpt.grounding.ram.backbone import PatchEmbed, PatchMerging, SwinBlock, SwinStage, SwinTransformer
from bubogpt.grounding.ram.checkpoint import (
    LEGACY_PREFIXES,
    RAM_IGNORED,
    RamCheckpointError,
    RamLoadReport,
    load_ram_checkpoint,
    ram_key_map,
)
from bubogpt.grounding.ram.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RAM_PRESETS,
    TINY_TAG_LIST,
    TINY_THRESHOLDS,
    RamConfig,
)
from bubogpt.grounding.ram.tagger import RamTagger
from bubogpt.grounding.ram.tagging_head import TaggingCrossAttention, TaggingHead, TaggingLayer, TaggingMlp
from bubogpt.grounding.ram.tags import class_thresholds, load_tag_list, load_thresholds, select_tags
from bubogpt.grounding.ram.transforms import preprocess_image
from bubogpt.grounding.swin import (
    SwinMlp,
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from bubogpt.official_checkpoints import Checkpoint, IgnoreRule, StateDict

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LEGACY_PREFIXES",
    "RAM_IGNORED",
    "RAM_PRESETS",
    "TINY_TAG_LIST",
    "TINY_THRESHOLDS",
    "Checkpoint",
    "IgnoreRule",
    "PatchEmbed",
    "PatchMerging",
    "RamCheckpointError",
    "RamConfig",
    "RamLoadReport",
    "RamTagger",
    "StateDict",
    "SwinBlock",
    "SwinMlp",
    "SwinStage",
    "SwinTransformer",
    "TaggingCrossAttention",
    "TaggingHead",
    "TaggingLayer",
    "TaggingMlp",
    "WindowAttention",
    "class_thresholds",
    "load_ram_checkpoint",
    "load_tag_list",
    "load_thresholds",
    "preprocess_image",
    "ram_key_map",
    "relative_position_index",
    "select_tags",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]
