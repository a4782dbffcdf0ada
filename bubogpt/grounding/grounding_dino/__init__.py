"""Grounding DINO (Swin-T OGC), inference path: the detector BuboGPT prompts with the RAM tags.

    image --preprocess_image--> pixels            tags --caption_from_tags--> "dog,cat." --tokenize--> text
                                  \\                                                                  /
                                   GroundingDino.forward(pixels, *text) -> (pred_logits, pred_boxes)
                                                        |
                              postprocess -> [(phrase, score, box_xyxy in original pixels), ...]

forward() is a fixed graph (no data-dependent Python control flow) that exports to ONNX with dynamic
batch, image height/width and text length; pre- and post-processing are plain Python around it.

One file per part, module and parameter names as the official code (see checkpoint.py for the map):
    config.py          GroundingDinoConfig, SwinConfig, BertTextConfig, GDINO_PRESETS
    backbone.py        Swin-T (stages around the shared `bubogpt.grounding.swin` layers)
    text_encoder.py    BERT with sub-sentence self-attention masks
    common.py          box MLP, inverse sigmoid, sine position embeddings, contrastive logits
    attention.py       multi-scale deformable, multi-head and bi-directional image-text attention
    transformer.py     feature enhancer, language-guided query selection, decoder
    model.py           GroundingDino (forward; forward_with_aux for training) + ONNX interface
    build.py           build_grounding_dino
    preprocessing.py   resized_size, preprocess_image, caption_from_tags, tokenize, sub-sentence masks
    postprocessing.py  Detection, postprocess
    inference.py       ground: preprocess, forward, postprocess for one image
    checkpoint.py      the official key map and the strict loader

Batches must hold equally sized images (the official pads mixed sizes and masks the padding; serving
resizes each image on its own and runs it alone or with same-size images, so no padding masks here).

Comparing backends: query selection takes the top 900 of ~18k encoder scores, and queries are slots
(learned content per rank), so scores tied to ~1e-5 may swap ranks and move every output a little
through the decoder's self-attention. At 800 px even torch vs torch (batch 2 vs 1) differs this way.
Compare raw outputs on small images (few tokens), and detections after thresholds at full size.
"""

from bubogpt.grounding.grounding_dino.backbone import SwinBackbone
from bubogpt.grounding.grounding_dino.build import build_grounding_dino
from bubogpt.grounding.grounding_dino.checkpoint import (
    GDINO_IGNORED,
    GroundingDinoCheckpointError,
    GroundingDinoLoadReport,
    checked_keys,
    grounding_dino_key_map,
    load_grounding_dino_checkpoint,
    official_name,
)
from bubogpt.grounding.grounding_dino.common import (
    MLP,
    contrastive_logits,
    inverse_sigmoid,
    sine_embed_boxes,
    sine_embed_scalar,
    sine_position_embedding,
)
from bubogpt.grounding.grounding_dino.config import (
    GDINO_PRESETS,
    SPECIAL_TOKENS,
    BertTextConfig,
    GroundingDinoConfig,
    SwinConfig,
)
from bubogpt.grounding.grounding_dino.inference import ground
from bubogpt.grounding.grounding_dino.model import (
    ONNX_DYNAMIC_AXES,
    ONNX_INPUT_NAMES,
    ONNX_OUTPUT_NAMES,
    GroundingDino,
)
from bubogpt.grounding.grounding_dino.postprocessing import Detection, postprocess
from bubogpt.grounding.grounding_dino.preprocessing import (
    GroundingText,
    caption_from_tags,
    load_tokenizer,
    preprocess_caption,
    preprocess_image,
    resized_size,
    special_token_ids,
    sub_sentence_masks,
    tokenize,
)
from bubogpt.grounding.grounding_dino.text_encoder import BertTextEncoder
from bubogpt.grounding.grounding_dino.transformer import Transformer, TransformerAuxOutputs

__all__ = [
    "GDINO_IGNORED",
    "GDINO_PRESETS",
    "MLP",
    "ONNX_DYNAMIC_AXES",
    "ONNX_INPUT_NAMES",
    "ONNX_OUTPUT_NAMES",
    "SPECIAL_TOKENS",
    "BertTextConfig",
    "BertTextEncoder",
    "Detection",
    "GroundingDino",
    "GroundingDinoCheckpointError",
    "GroundingDinoConfig",
    "GroundingDinoLoadReport",
    "GroundingText",
    "SwinBackbone",
    "SwinConfig",
    "Transformer",
    "TransformerAuxOutputs",
    "build_grounding_dino",
    "caption_from_tags",
    "checked_keys",
    "contrastive_logits",
    "ground",
    "grounding_dino_key_map",
    "inverse_sigmoid",
    "load_grounding_dino_checkpoint",
    "load_tokenizer",
    "official_name",
    "postprocess",
    "preprocess_caption",
    "preprocess_image",
    "resized_size",
    "sine_embed_boxes",
    "sine_embed_scalar",
    "sine_position_embedding",
    "special_token_ids",
    "sub_sentence_masks",
    "tokenize",
]
