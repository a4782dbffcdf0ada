"""Grounding DINO configuration: the official Swin-T OGC sizes and a tiny preset for tests.

Only the inference path of the official `GroundingDINO_SwinT_OGC.py` config is described here. The
switches that the official config fixes and that our code therefore hard-wires (and does not expose):

    two_stage_type "standard", embed_init_tgt True   language-guided query selection, learned queries
    use_text_enhancer / use_fusion_layer / use_text_cross_attention True
    sub_sentence_present True                        sub-sentence BERT masks and position ids
    dec_pred_bbox_embed_share True                   one box MLP for every decoder layer
    two_stage_bbox_embed_share False                 the query-selection box MLP is a separate copy
    transformer_activation "relu", dropout 0, query_dim 4, position_embedding "sine" (normalised)

The BERT part (`BertTextConfig`) is read from a local text encoder directory (an HF `config.json`
plus `vocab.txt`) with `GroundingDinoConfig.with_text_encoder_dir`; nothing is fetched from a hub.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

# Grounding DINO normalises with the ImageNet statistics (groundingdino/util/inference.py load_image).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Tokens that close a sub-sentence (bertwarper.generate_masks_with_special_tokens_and_transfer_map).
SPECIAL_TOKENS = ("[CLS]", "[SEP]", ".", "?")


@dataclass(frozen=True)
class SwinConfig:
    """The Swin backbone (groundingdino/models/GroundingDINO/backbone/swin_transformer.py)."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    out_indices: tuple[int, ...] = (1, 2, 3)  # return_interm_indices of the official config

    @property
    def num_features(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

    @property
    def out_channels(self) -> tuple[int, ...]:
        return tuple(self.num_features[i] for i in self.out_indices)


@dataclass(frozen=True)
class BertTextConfig:
    """The BERT text encoder; defaults are bert-base-uncased."""

    vocab_size: int = 30522
    hidden: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_dir(cls, text_encoder_dir: str | Path) -> BertTextConfig:
        """Read an HF BERT `config.json` (only absolute positions and exact GELU are supported)."""
        path = Path(text_encoder_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"text encoder config not found: {path}")
        raw = json.loads(path.read_text())
        model_type = raw.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"{path}: model_type {model_type!r}, Grounding DINO uses a BERT text encoder")
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act {raw['hidden_act']!r}, only exact 'gelu' is supported")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported")
        return cls(
            vocab_size=int(raw["vocab_size"]),
            hidden=int(raw["hidden_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=int(raw["num_attention_heads"]),
            intermediate=int(raw["intermediate_size"]),
            max_positions=int(raw.get("max_position_embeddings", 512)),
            type_vocab_size=int(raw.get("type_vocab_size", 2)),
            norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            pad_token_id=int(raw.get("pad_token_id", 0) or 0),
        )


@dataclass(frozen=True)
class GroundingDinoConfig:
    """Grounding DINO; defaults are GroundingDINO_SwinT_OGC.py."""

    swin: SwinConfig = field(default_factory=SwinConfig)
    text: BertTextConfig = field(default_factory=BertTextConfig)
    hidden: int = 256  # d_model of the transformer
    num_heads: int = 8  # deformable attention and decoder attentions; text enhancer + fusion use half
    dim_feedforward: int = 2048  # text enhancer FFN and fusion width use half
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    num_queries: int = 900
    num_feature_levels: int = 4  # 3 backbone levels + 1 extra stride-2 conv
    enc_n_points: int = 4
    dec_n_points: int = 4
    max_text_len: int = 256
    pe_temperature: float = 20.0  # pe_temperatureH == pe_temperatureW in the official config
    group_norm_groups: int = 32  # the input projections' GroupNorm (hard-coded 32 in the official code)
    fusion_init_values: float = 1e-4  # layer-scale init of the image-text fusion (only matters untrained)
    # preprocessing: RandomResize([800], max_size=1333), ImageNet statistics
    image_size: int = 800
    max_image_size: int = 1333
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.hidden % self.num_heads or self.hidden % 2:
            raise ValueError(f"hidden {self.hidden} must be even and divisible by num_heads {self.num_heads}")
        if self.num_heads % 2 or (self.dim_feedforward // 2) % (self.num_heads // 2):
            raise ValueError("num_heads must be even and dim_feedforward/2 divisible by num_heads/2")
        if self.hidden % self.group_norm_groups:
            raise ValueError(f"hidden {self.hidden} is not divisible by {self.group_norm_groups} GroupNorm groups")
        if self.num_feature_levels < len(self.swin.out_indices):
            raise ValueError("num_feature_levels must cover every backbone output")
        if len(self.swin.depths) != len(self.swin.num_heads):
            raise ValueError("swin depths and num_heads differ in length")

    @property
    def text_heads(self) -> int:
        return self.num_heads // 2

    @property
    def fusion_dim(self) -> int:
        return self.dim_feedforward // 2

    def with_text_encoder_dir(self, text_encoder_dir: str | Path) -> GroundingDinoConfig:
        """This config with the BERT sizes of a local HF text encoder directory."""
        return dataclasses.replace(self, text=BertTextConfig.from_dir(text_encoder_dir))


GDINO_PRESETS: dict[str, GroundingDinoConfig] = {
    "swint_ogc": GroundingDinoConfig(),
    # Every part present at toy sizes. Swin depth 2 per stage so the shifted-window blocks run too;
    # window 7 on tiny feature maps exercises the padding path. GroupNorm keeps 32 groups, i.e. one
    # channel per group at hidden 32: images must exceed 64 px a side (the stride-64 level > 1x1).
    "tiny": GroundingDinoConfig(
        swin=SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7),
        text=BertTextConfig(vocab_size=128, hidden=32, num_layers=2, num_heads=2, intermediate=64, max_positions=64),
        hidden=32,
        num_heads=4,
        dim_feedforward=64,
        num_encoder_layers=1,
        num_decoder_layers=2,
        num_queries=30,
        enc_n_points=2,
        dec_n_points=2,
        max_text_len=32,
        image_size=128,
        max_image_size=192,
    ),
}
