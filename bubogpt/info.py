"""Per-network parameter counts and tensor shapes of a preset (`bubo info`).

Ten rows for a preset (`describe_preset`): the seven BuboGPT components (`describe`), then the grounding
networks that go with it (`GROUNDING_PRESET_OF`): tagger (RAM), detector (Grounding DINO), segmenter (SAM
encoder + prompt decoder). Counts are `sum(p.numel() for p in net.parameters())` over the networks we build and serve,
which is how the official implementations count too: a shared tensor once (Grounding DINO's box MLP,
one module under 12 state-dict paths), buffers never. Where the official model holds parts we do not
build, the row also gives the official count and what the difference is.

Models are built on the meta device: counting the 7B preset allocates no memory.
"""

from __future__ import annotations

import torch

from bubogpt.config import BuboConfig
from bubogpt.model import COMPONENTS, BuboGPT

GROUNDING_COMPONENTS = ("tagger", "detector", "segmenter")

# The official implementations' own counts, sum(p.numel() for p in model.parameters()) (shared and
# tied tensors once), of the model classes BuboGPT's demo builds, where they hold more than we build.
# Counted by instantiating the official code (modules copied out, timm/torchvision/hub stubbed):
#   RAM(image_size=384, vit="swin_l"), recognize-anything 7cb804a, with its tie_encoder_decoder_weights
#       (tag_encoder layers 0-1 = tagging_head) and the LM head tied to the word embeddings
#   GroundingDINO from GroundingDINO_SwinT_OGC.py, GroundingDINO 856dde2, bert-base-uncased sizes
#   sam_model_registry["vit_h"], segment-anything dca509f
OFFICIAL_COUNTS: dict[tuple[str, str], tuple[int, str]] = {
    ("tagger", "swin_l_384"): (
        469_148_785, "the Tag2Text captioning branch (tag_encoder, text_decoder) is not built: tagging never runs it"),
    ("detector", "swint_ogc"): (172_839_682, "BERT's pooler (590,592) is not built: nothing reads its output"),
    ("segmenter", "vit_h"): (641_090_608, "point and mask prompt paths (5,452) are not built: boxes only"),
    ("segmenter", "vit_l"): (312_342_832, "point and mask prompt paths (5,452) are not built: boxes only"),
    ("segmenter", "vit_b"): (93_735_472, "point and mask prompt paths (5,452) are not built: boxes only"),
}

_NETWORK_NAMES = {
    ("tagger", "swin_l_384"): "RAM Swin-L",
    ("detector", "swint_ogc"): "Grounding DINO Swin-T OGC",
    ("segmenter", "vit_h"): "SAM ViT-H",
    ("segmenter", "vit_l"): "SAM ViT-L",
    ("segmenter", "vit_b"): "SAM ViT-B",
}


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() yields a shared tensor once


def component_shapes(cfg: BuboConfig) -> dict[str, tuple[list, list]]:
    """component -> (input shape, output shape); "B" is the batch axis, "S" the sequence."""
    v, vq, a, aq, llm = cfg.vision, cfg.vision_qformer, cfg.audio, cfg.audio_qformer, cfg.llm
    return {
        "vision_encoder": (["B", 3, v.image_size, v.image_size], ["B", v.num_tokens, v.width]),
        "vision_qformer": (["B", v.num_tokens, vq.encoder_width], ["B", vq.num_queries, vq.hidden]),
        "vision_proj": (["B", vq.num_queries, vq.hidden], ["B", vq.num_queries, llm.hidden]),
        "audio_encoder": (["B", a.num_clips, 1, a.num_mel_bins, a.target_frames], ["B", a.num_tokens, a.width]),
        "audio_qformer": (["B", a.num_tokens, aq.encoder_width], ["B", aq.num_queries, aq.hidden]),
        "audio_proj": (["B", aq.num_queries, aq.hidden], ["B", aq.num_queries, llm.hidden]),
        "llm": (["S", llm.hidden], ["S", llm.vocab_size]),
    }


def _component_networks(cfg: BuboConfig) -> dict[str, str]:
    v, vq, a, aq, llm = cfg.vision, cfg.vision_qformer, cfg.audio, cfg.audio_qformer, cfg.llm
    return {
        "vision_encoder": f"EVA ViT {v.depth}x{v.width}, {v.image_size} px",
        "vision_qformer": f"Q-Former {vq.num_layers}x{vq.hidden}",
        "vision_proj": "Linear",
        "audio_encoder": f"ImageBind audio {a.depth}x{a.width}",
        "audio_qformer": f"Q-Former {aq.num_layers}x{aq.hidden}",
        "audio_proj": "Linear",
        "llm": f"LLaMA {llm.num_layers}x{llm.hidden}",
    }


def describe_grounding(preset: str) -> list[dict]:
    """The three grounding rows of a grounding preset (GROUNDING_PRESETS), built on meta."""
    from bubogpt.grounding import grounding_dino as gdino
    from bubogpt.grounding import ram, sam
    from bubogpt.grounding.pipeline import GROUNDING_PRESETS

    gcfg = GROUNDING_PRESETS[preset]
    rcfg, dcfg, scfg = ram.RAM_PRESETS[gcfg.tagger], gdino.GDINO_PRESETS[gcfg.detector], sam.SAM_PRESETS[gcfg.segmenter]
    with torch.device("meta"):
        networks = {
            "tagger": [ram.RamTagger(rcfg)],
            "detector": [gdino.GroundingDino(dcfg)],  # BERT sizes of the preset (bert-base-uncased)
            "segmenter": [sam.SamImageEncoder(scfg), sam.SamPromptDecoder(scfg)],
        }
    presets = {"tagger": gcfg.tagger, "detector": gcfg.detector, "segmenter": gcfg.segmenter}
    size = scfg.img_size
    shapes = {
        "tagger": (["B", 3, rcfg.image_size, rcfg.image_size], ["B", rcfg.num_tags]),
        # + the caption's tokens [B, T] (T <= max_text_len) and their masks
        "detector": (["B", 3, "H", "W"], ["B", dcfg.num_queries, dcfg.max_text_len]),
        # encoder -> embeddings [B, C, S/16, S/16]; prompt decoder (+ N boxes) -> one mask per box
        "segmenter": (["B", 3, size, size], ["B", "N", scfg.low_res_size, scfg.low_res_size]),
    }
    extra = {"tagger": f", {rcfg.image_size} px", "detector": "", "segmenter": ""}
    rows = []
    for name in GROUNDING_COMPONENTS:
        key = (name, presets[name])
        params = sum(count_parameters(net) for net in networks[name])
        official, not_built = OFFICIAL_COUNTS.get(key, (params, ""))
        family = {"tagger": "RAM", "detector": "Grounding DINO", "segmenter": "SAM"}[name]
        rows.append({
            "component": name,
            "network": _NETWORK_NAMES.get(key, f"{family} {presets[name]}") + extra[name],
            "params": params,
            "official_params": official,
            "not_built": not_built,
            "input": shapes[name][0],
            "output": shapes[name][1],
        })
    return rows


def describe(cfg: BuboConfig) -> list[dict]:
    """The seven BuboGPT components (`describe_preset` adds the grounding networks)."""
    from bubogpt.llm import build_llm

    with torch.device("meta"):
        model = BuboGPT(cfg)
        llm = build_llm(cfg.llm)
    modules = {name: getattr(model, name) for name in COMPONENTS if name != "llm"}
    modules["llm"] = llm
    shapes = component_shapes(cfg)
    networks = _component_networks(cfg)
    rows = []
    for name in COMPONENTS:
        params = count_parameters(modules[name])
        rows.append({
            "component": name, "network": networks[name], "params": params, "official_params": params,
            "not_built": "", "input": shapes[name][0], "output": shapes[name][1],
        })
    return rows


def describe_preset(cfg: BuboConfig) -> list[dict]:
    """The preset's ten networks (`bubo info`): its components, then the grounding networks that go with it."""
    from bubogpt.grounding.pipeline import GROUNDING_PRESET_OF

    rows = describe(cfg)
    if cfg.name in GROUNDING_PRESET_OF:
        rows += describe_grounding(GROUNDING_PRESET_OF[cfg.name])
    return rows
