"""Segment Anything (SAM) for box prompts: image encoder, prompt decoder, pre/post-processing, checkpoints.

BuboGPT's grounding step gives SAM one box per detected entity (Grounding DINO's output, mapped to
SAM's input frame) and keeps a single mask per box (`multimask_output=False`: the first mask token).
We split SAM into the two networks a server runs at different rates:

    image (uint8 HxWx3) --preprocess_image--> pixels [3,S,S] --SamImageEncoder--> embeddings [B,C,S/16,S/16]
    boxes (original px) --transform_boxes---> boxes [B,N,4] in the S x S input frame
    (embeddings, boxes) --SamPromptDecoder--> low-res mask logits [B,N,S/4,S/4], predicted IoU [B,N]
    logits --postprocess_masks--> logits at the original size --masks_from_logits (> 0.0)--> bool masks

Both networks are export-friendly: every shape decision inside `forward` comes from the config (Python
ints), never from the data, so `torch.onnx.export` traces one graph with a dynamic batch axis (and a
dynamic number of boxes for the decoder). Pre/post-processing, which depends on each image's size,
lives in plain functions beside the networks.

One file per part, as `segment_anything.modeling` splits SAM:
    config.py          SamConfig, SAM_PRESETS (vit_h, vit_l, vit_b, tiny), pixel statistics
    common.py          LayerNorm2d, MLPBlock
    image_encoder.py   SamImageEncoder (ViT with windowed / global blocks, neck)
    prompt_encoder.py  SamBoxPromptEncoder (box corners, "no mask" embedding, random Fourier PE)
    transformer.py     SamTwoWayTransformer
    mask_decoder.py    SamMaskDecoder (single-mask output)
    prompt_decoder.py  SamPromptDecoder = prompt encoder + mask decoder, the second exported network
    transforms.py      preprocess_image, transform_boxes, postprocess_masks, masks_from_logits, ...
    checkpoint.py      official key maps, load_sam_checkpoint (strict, through bubogpt.official_checkpoints)

Names mirror the official modules (image encoder: identical below `image_encoder.`; mask decoder:
identical below `mask_decoder.`), so the checkpoint key map is the identity except for the prompt
encoder, where we keep only what box prompts use; see `sam_key_map` and `SAM_IGNORED_KEYS`.

Numerics follow the official code: LayerNorm eps 1e-6 in the ViT and in LayerNorm2d, 1e-5 in the
two-way transformer; exact (erf) GELU in the ViT and the mask upscaling, ReLU in the transformer MLPs.
"""

from bubogpt.grounding.sam.checkpoint import (
    SAM_CHECKED_CONSTANTS,
    SAM_IGNORED_KEYS,
    SamCheckpointError,
    SamLoadReport,
    image_encoder_key_map,
    load_sam_checkpoint,
    prompt_decoder_key_map,
    sam_key_map,
)
from bubogpt.grounding.sam.common import LayerNorm2d, MLPBlock
from bubogpt.grounding.sam.config import SAM_MASK_THRESHOLD, SAM_PIXEL_MEAN, SAM_PIXEL_STD, SAM_PRESETS, SamConfig
from bubogpt.grounding.sam.image_encoder import SamImageEncoder, SamPatchEmbed, SamViTAttention, SamViTBlock
from bubogpt.grounding.sam.mask_decoder import SamMaskDecoder, SamMLP
from bubogpt.grounding.sam.prompt_decoder import SamPromptDecoder
from bubogpt.grounding.sam.prompt_encoder import PositionEmbeddingRandom, SamBoxPromptEncoder
from bubogpt.grounding.sam.transformer import SamTwoWayAttention, SamTwoWayAttentionBlock, SamTwoWayTransformer
from bubogpt.grounding.sam.transforms import (
    get_preprocess_shape,
    inverse_transform_boxes,
    masks_from_logits,
    postprocess_masks,
    preprocess_image,
    transform_boxes,
)
from bubogpt.official_checkpoints import Checkpoint, StateDict

__all__ = [
    "SAM_CHECKED_CONSTANTS",
    "SAM_IGNORED_KEYS",
    "SAM_MASK_THRESHOLD",
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "SAM_PRESETS",
    "Checkpoint",
    "LayerNorm2d",
    "MLPBlock",
    "PositionEmbeddingRandom",
    "SamBoxPromptEncoder",
    "SamCheckpointError",
    "SamConfig",
    "SamImageEncoder",
    "SamLoadReport",
    "SamMLP",
    "SamMaskDecoder",
    "SamPatchEmbed",
    "SamPromptDecoder",
    "SamTwoWayAttention",
    "SamTwoWayAttentionBlock",
    "SamTwoWayTransformer",
    "SamViTAttention",
    "SamViTBlock",
    "StateDict",
    "get_preprocess_shape",
    "image_encoder_key_map",
    "inverse_transform_boxes",
    "load_sam_checkpoint",
    "masks_from_logits",
    "postprocess_masks",
    "preprocess_image",
    "prompt_decoder_key_map",
    "sam_key_map",
    "transform_boxes",
]
