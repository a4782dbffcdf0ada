"""SAM configuration (`SamConfig`), the official ViT-H/L/B presets and a tiny one (`SAM_PRESETS`)."""

from __future__ import annotations

from dataclasses import dataclass

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
SAM_MASK_THRESHOLD = 0.0  # logits above this are "in the mask" (official `Sam.mask_threshold`)


@dataclass(frozen=True)
class SamConfig:
    """SAM sizes; the defaults are ViT-H as in the official `build_sam_vit_h`."""

    name: str = "vit_h"
    # image encoder (ViTDet-style ViT)
    encoder_embed_dim: int = 1280
    encoder_depth: int = 32
    encoder_num_heads: int = 16
    encoder_global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    encoder_window_size: int = 14
    encoder_mlp_ratio: float = 4.0
    encoder_out_chans: int = 256
    img_size: int = 1024
    patch_size: int = 16
    # prompt encoder + mask decoder
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    decoder_attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # Hidden width of the official mask-prompt path (`mask_downscaling`). We drop that path (box prompts
    # only); the field documents the official architecture for key lists and parameter counts.
    mask_in_chans: int = 16
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so that configs compare and hash.
        object.__setattr__(self, "encoder_global_attn_indexes", tuple(self.encoder_global_attn_indexes))
        object.__setattr__(self, "pixel_mean", tuple(self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(self.pixel_std))
        problems = []
        if self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.encoder_embed_dim % self.encoder_num_heads:
            problems.append(f"encoder_embed_dim {self.encoder_embed_dim} % encoder_num_heads {self.encoder_num_heads}")
        if self.encoder_out_chans != self.prompt_embed_dim:
            # The mask decoder consumes the encoder's output as is.
            problems.append(f"encoder_out_chans {self.encoder_out_chans} != prompt_embed_dim {self.prompt_embed_dim}")
        internal = self.prompt_embed_dim // self.decoder_attention_downsample_rate
        if internal % self.decoder_num_heads or self.prompt_embed_dim % self.decoder_num_heads:
            problems.append(f"prompt_embed_dim {self.prompt_embed_dim} (and /downsample) % decoder_num_heads")
        if self.prompt_embed_dim % 8:
            problems.append(f"prompt_embed_dim {self.prompt_embed_dim} must be a multiple of 8 (mask upscaling)")
        if self.mask_in_chans % 4:
            problems.append(f"mask_in_chans {self.mask_in_chans} must be a multiple of 4")
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            problems.append(f"encoder_global_attn_indexes {bad} outside depth {self.encoder_depth}")
        if self.encoder_window_size <= 0:
            problems.append("encoder_window_size must be positive (global blocks go in encoder_global_attn_indexes)")
        if self.iou_head_depth < 1:
            problems.append("iou_head_depth must be >= 1")
        if problems:
            raise ValueError(f"SamConfig {self.name!r}: " + "; ".join(problems))

    @property
    def embed_size(self) -> int:
        """Side of the image embedding grid (64 for the official 1024 / 16)."""
        return self.img_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's mask logits (4x the embedding grid: 256 officially)."""
        return 4 * self.embed_size

    @property
    def encoder_mlp_dim(self) -> int:
        return int(self.encoder_embed_dim * self.encoder_mlp_ratio)

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1


SAM_PRESETS: dict[str, SamConfig] = {
    # official build_sam_vit_{h,l,b}: only the encoder differs
    "vit_h": SamConfig(name="vit_h"),
    "vit_l": SamConfig(
        name="vit_l", encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_b": SamConfig(
        name="vit_b", encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11),
    ),
    # Tests: every part present and exercised (window 6 on a 16x16 grid pads to 18x18 like 14 on
    # the official 64x64 pads to 70x70; one windowed and one global block), forward in milliseconds.
    "tiny": SamConfig(
        name="tiny", encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2,
        encoder_global_attn_indexes=(1,), encoder_window_size=6, encoder_out_chans=32, img_size=256,
        prompt_embed_dim=32, decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32,
        mask_in_chans=8,
    ),
}
