"""Configurations of every BuboGPT network, and the presets (`bubogpt-7b`, `nano`).

Plain frozen dataclasses: a preset is a constructor call, a saved model carries its config as JSON.
Defaults are the paper's sizes (EVA-ViT-g + BLIP-2 Q-Former, ImageBind-huge audio, Vicuna-7B).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# CLIP normalisation, used by BLIP-2's eval image processor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionEncoderConfig:
    """EVA-ViT-g as BLIP-2 uses it (last block dropped: depth 39), followed by BLIP-2's `ln_vision`."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1408
    depth: int = 39
    num_heads: int = 16
    mlp_dim: int = 6144  # int(1408 * 4.3637)
    norm_eps: float = 1e-6  # the blocks' LayerNorms
    out_norm_eps: float = 1e-5  # ln_vision (a plain nn.LayerNorm in BLIP-2)
    pixel_mean: tuple[float, float, float] = CLIP_MEAN
    pixel_std: tuple[float, float, float] = CLIP_STD

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + 1


@dataclass(frozen=True)
class QFormerConfig:
    """BLIP-2 Q-Former: BERT-base layers, cross-attention to the encoder every `cross_attention_freq` layers."""

    num_queries: int = 32
    hidden: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate: int = 3072
    encoder_width: int = 1408
    cross_attention_freq: int = 2
    norm_eps: float = 1e-12


@dataclass(frozen=True)
class AudioEncoderConfig:
    """ImageBind-huge audio trunk plus the audio front end (BuboGPT's eval processor settings)."""

    # front end: waveform -> normalised Kaldi fbank clips
    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_frames: int = 204
    clip_seconds: float = 5.0
    clips_per_audio: int = 6
    use_global_clip: bool = True
    fbank_mean: float = -4.268
    fbank_std: float = 9.138
    # trunk
    patch_size: int = 16
    patch_stride: int = 10
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    norm_eps: float = 1e-6  # the blocks' LayerNorms (the stem's LayerNorm uses torch's default 1e-5)
    logit_scale: float = 20.0  # ImageBind's fixed audio post-processing scale

    @property
    def num_clips(self) -> int:
        return self.clips_per_audio + (1 if self.use_global_clip else 0)

    @property
    def patch_grid(self) -> tuple[int, int]:
        rows = (self.num_mel_bins - self.patch_size) // self.patch_stride + 1
        cols = (self.target_frames - self.patch_size) // self.patch_stride + 1
        return rows, cols

    @property
    def num_tokens(self) -> int:
        rows, cols = self.patch_grid
        return rows * cols + 1


@dataclass(frozen=True)
class LLMConfig:
    """LLaMA architecture (Vicuna). Mirrors the fields of a Hugging Face LlamaConfig."""

    vocab_size: int = 32000
    hidden: int = 4096
    intermediate: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads


@dataclass(frozen=True)
class BuboConfig:
    name: str
    vision: VisionEncoderConfig = field(default_factory=VisionEncoderConfig)
    vision_qformer: QFormerConfig = field(default_factory=QFormerConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    audio_qformer: QFormerConfig = field(default_factory=lambda: QFormerConfig(encoder_width=768))
    llm: LLMConfig = field(default_factory=LLMConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BuboConfig":
        return cls(
            name=data["name"],
            vision=part_from_dict(VisionEncoderConfig, data["vision"]),
            vision_qformer=part_from_dict(QFormerConfig, data["vision_qformer"]),
            audio=part_from_dict(AudioEncoderConfig, data["audio"]),
            audio_qformer=part_from_dict(QFormerConfig, data["audio_qformer"]),
            llm=part_from_dict(LLMConfig, data["llm"]),
        )


def part_from_dict(kind, values: dict[str, Any]):
    """One part's config from its JSON form (`dataclasses.asdict`): lists become tuples again, and an
    unknown field is an error naming it."""
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{kind.__name__}: unknown fields {sorted(unknown)}")
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def bubogpt_7b() -> BuboConfig:
    """The paper's model: EVA-ViT-g, BLIP-2 Q-Former, ImageBind-huge audio, Vicuna-7B."""
    return BuboConfig(name="bubogpt-7b")


def nano() -> BuboConfig:
    """Tiny model with every part of the pipeline present; the built-in default.

    Front ends keep their real sizes (224 px images, 128 x 204 fbank clips, 32 queries) so the
    served interfaces are the same as the 7B model's; only widths and depths shrink.
    The LLM keeps head_dim 32: vLLM's CPU attention needs head_dim >= 32.
    """
    return BuboConfig(
        name="nano",
        # 28 px patches (8 x 8 tokens) and non-overlapping audio patches: a wider, deeper encoder for
        # the same compute, which is what learns the synthetic world's shapes in the training budget
        vision=VisionEncoderConfig(patch_size=28, width=128, depth=3, num_heads=4, mlp_dim=512),
        vision_qformer=QFormerConfig(hidden=64, num_layers=2, num_heads=2, intermediate=128, encoder_width=128),
        audio=AudioEncoderConfig(patch_stride=16, width=64, depth=2, num_heads=2, mlp_dim=256),
        audio_qformer=QFormerConfig(hidden=64, num_layers=2, num_heads=2, intermediate=128, encoder_width=64),
        llm=LLMConfig(
            vocab_size=1024,  # room for every word of the synthetic world as one token
            hidden=128,
            intermediate=256,
            num_layers=2,
            num_heads=4,
            num_kv_heads=4,
            max_position_embeddings=2048,
        ),
    )


PRESETS = {
    "bubogpt-7b": bubogpt_7b,
    "nano": nano,
}


def get_preset(name: str) -> BuboConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
