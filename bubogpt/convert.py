"""Official BuboGPT checkpoint files -> our format (`bubo convert`).

Reads eva_vit_g.pth, blip2_pretrained_flant5xxl.pth, imagebind_huge.pth and bubogpt_7b.pth through
the explicit key maps of `bubogpt.official_checkpoints`, checks the Vicuna directory against the
preset, and writes a model directory that `bubo export` / `bubo serve --weights` use.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from bubogpt.config import get_preset
from bubogpt.llm import llm_config_from_hf
from bubogpt.model import BuboGPT
from bubogpt.official_checkpoints import (
    CheckpointError,
    load_blip2_checkpoint,
    load_bubogpt_checkpoint,
    load_eva_vit_checkpoint,
    load_imagebind_audio_checkpoint,
)
from bubogpt.weights import LLM_DIR, save_model

log = logging.getLogger(__name__)


def build_from_official(
    preset: str,
    eva_vit_g: str | Path | dict,
    blip2: str | Path | dict,
    imagebind: str | Path | dict,
    bubogpt: str | Path | dict,
    allow_pickle: bool = False,
) -> BuboGPT:
    """The modality side filled entirely from the official files (every parameter must be covered)."""
    cfg = get_preset(preset)
    with torch.device("meta"):
        model = BuboGPT(cfg)
    # Uninitialised storage is safe here: each loader fails unless it fills every tensor it owns,
    # and together they own every parameter and buffer.
    model = model.to_empty(device="cpu").eval()
    load_eva_vit_checkpoint(model.vision_encoder, eva_vit_g, allow_pickle=allow_pickle)
    load_blip2_checkpoint(model.vision_encoder, model.vision_qformer, blip2, allow_pickle=allow_pickle)
    load_imagebind_audio_checkpoint(model.audio_encoder, imagebind, allow_pickle=allow_pickle)
    load_bubogpt_checkpoint(
        model.vision_qformer, model.vision_proj, model.audio_qformer, model.audio_proj, bubogpt, allow_pickle=allow_pickle
    )
    return model


def convert_official(
    out: str | Path,
    preset: str,
    eva_vit_g: str | Path,
    blip2: str | Path,
    imagebind: str | Path,
    bubogpt: str | Path,
    vicuna_dir: str | Path,
    link_llm: bool = True,
    allow_pickle: bool = False,
) -> Path:
    from transformers import AutoConfig

    cfg = get_preset(preset)
    vicuna_dir = Path(vicuna_dir).resolve()
    found = llm_config_from_hf(AutoConfig.from_pretrained(str(vicuna_dir)))
    expected = cfg.llm
    for name in ("vocab_size", "hidden", "intermediate", "num_layers", "num_heads"):
        if getattr(found, name) != getattr(expected, name):
            raise CheckpointError(f"{vicuna_dir}: {name} is {getattr(found, name)}, preset {preset} expects {getattr(expected, name)}")
    model = build_from_official(preset, eva_vit_g, blip2, imagebind, bubogpt, allow_pickle=allow_pickle)
    out = Path(out)
    provenance = {
        "kind": "official",
        "files": {k: str(Path(v).resolve()) for k, v in
                  dict(eva_vit_g=eva_vit_g, blip2=blip2, imagebind=imagebind, bubogpt=bubogpt, vicuna=vicuna_dir).items()},
    }
    save_model(model, out, provenance=provenance)
    target = out / LLM_DIR
    if target.exists() or target.is_symlink():
        raise FileExistsError(f"{target} exists; choose an empty output directory")
    if link_llm:
        target.symlink_to(vicuna_dir, target_is_directory=True)  # 13 GB: link, don't copy
    else:
        shutil.copytree(vicuna_dir, target)
    log.info("converted %s to %s (LLM %s %s)", preset, out, "linked from" if link_llm else "copied from", vicuna_dir)
    return out
