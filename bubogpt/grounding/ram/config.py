"""RAM configuration (`RamConfig`), its presets (`RAM_PRESETS`) and the `tiny` preset's vocabulary."""

from __future__ import annotations

from dataclasses import dataclass

# RAM's eval transform normalises with the ImageNet statistics (not CLIP's, unlike BLIP-2).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class RamConfig:
    """RAM's tagging network. Defaults are the official Swin-L / 384 px model (`ram_swin_large_14m.pth`).

    Sources: `ram/configs/swin/config_swinL_384.json` (Swin), `ram/configs/q2l_config.json` (tagging
    head; RAM overrides its `encoder_width` to 512), and the literals in `ram/models/ram.py`.
    """

    # Swin image encoder
    image_size: int = 384
    patch_size: int = 4
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0
    swin_norm_eps: float = 1e-5  # plain nn.LayerNorm
    # The joint image/label width: image_proj's output, label_embed's width, the cross-attention's
    # key/value input. RAM hard-codes 512 (the CLIP text embedding width its label embeddings came from).
    joint_dim: int = 512
    # Tagging head (q2l_config.json)
    head_hidden: int = 768
    head_layers: int = 2
    head_heads: int = 4
    head_intermediate: int = 3072
    head_norm_eps: float = 1e-12
    # Tags
    num_tags: int = 4585
    default_threshold: float = 0.68  # RAM's `threshold`: used for tags the threshold file does not list
    # Tags RAM never outputs. BuboGPT builds RAM with the default (none deleted).
    delete_tag_index: tuple[int, ...] = ()
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        problems = []
        if len(self.depths) != len(self.num_heads):
            problems.append(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        grid = self.image_size // self.patch_size
        if grid % (2 ** (len(self.depths) - 1)):
            problems.append(f"patch grid {grid} cannot be halved {len(self.depths) - 1} times")
        for stage in range(len(self.depths) if not problems else 0):  # the checks below need a valid grid
            resolution = grid // 2**stage
            window, _ = self.stage_window(stage)
            if resolution % window:  # Swin's window partition needs whole windows (RAM does not pad)
                problems.append(f"stage {stage}: resolution {resolution} is not a multiple of window {window}")
            if self.stage_dim(stage) % self.num_heads[stage]:
                problems.append(
                    f"stage {stage}: width {self.stage_dim(stage)} not divisible by {self.num_heads[stage]} heads"
                )
        if self.head_hidden % self.head_heads:
            problems.append(f"head_hidden {self.head_hidden} not divisible by head_heads {self.head_heads}")
        if any(not 0 <= i < self.num_tags for i in self.delete_tag_index):
            problems.append(f"delete_tag_index {self.delete_tag_index} outside [0, {self.num_tags})")
        if problems:
            raise ValueError("invalid RamConfig: " + "; ".join(problems))

    def stage_dim(self, stage: int) -> int:
        return self.embed_dim * 2**stage

    def stage_resolution(self, stage: int) -> int:
        return self.image_size // self.patch_size // 2**stage

    def stage_window(self, stage: int) -> tuple[int, int]:
        """(window, shift of the odd blocks) of a stage, with Swin's rule for maps no larger than a window."""
        resolution = self.stage_resolution(stage)
        if resolution <= self.window_size:
            return resolution, 0
        return self.window_size, self.window_size // 2

    @property
    def vision_width(self) -> int:
        return self.stage_dim(len(self.depths) - 1)

    @property
    def num_image_tokens(self) -> int:
        """Tokens the tagging head attends to: the pooled token plus the last stage's patches."""
        return 1 + self.stage_resolution(len(self.depths) - 1) ** 2


# A small vocabulary for the `tiny` preset and tests: common nouns, in the official list's (alphabetical)
# order, each with its threshold from the official `ram_tag_list_threshold.txt`.
TINY_TAG_LIST: tuple[str, ...] = (
    "ball", "beach", "bicycle", "bird", "boat", "building", "car", "cat",
    "chair", "child", "cloud", "dog", "flower", "food", "grass", "horse",
    "lake", "man", "person", "road", "sky", "swan", "tree", "water",
)  # fmt: skip
TINY_THRESHOLDS: tuple[float, ...] = (
    0.80, 0.90, 0.90, 0.83, 0.76, 0.80, 0.77, 0.90,
    0.77, 0.84, 0.75, 0.90, 0.82, 0.70, 0.83, 0.87,
    0.80, 0.80, 0.86, 0.90, 0.70, 0.82, 0.80, 0.85,
)  # fmt: skip

RAM_PRESETS: dict[str, RamConfig] = {
    "swin_l_384": RamConfig(),
    # Every part present at toy sizes. 64 px / patch 4 -> 16x16 map; window 4: stages 0-1 use shifted
    # windows (with the attention mask), stage 2 (4x4) is one unshifted window, stage 3 (2x2) exercises
    # Swin's "map smaller than the window" rule. One deleted tag ("food") exercises delete_tag_index.
    "tiny": RamConfig(
        image_size=64,
        embed_dim=16,
        depths=(2, 2, 2, 2),
        num_heads=(2, 2, 4, 4),
        window_size=4,
        joint_dim=32,
        head_hidden=48,
        head_layers=2,
        head_heads=4,
        head_intermediate=96,
        num_tags=len(TINY_TAG_LIST),
        delete_tag_index=(TINY_TAG_LIST.index("food"),),
    ),
}
