"""Official checkpoint files -> our format (`bubo convert`).

BuboGPT's files: eva_vit_g.pth, blip2_pretrained_flant5xxl.pth, imagebind_huge.pth and bubogpt_7b.pth
go through the explicit key maps of `bubogpt.official_checkpoints`, the Vicuna directory is checked
against the preset, and a model directory is written that `bubo export` / `bubo serve --weights` use.

The grounding files: ram_swin_large_14m.pth (+ RAM's ram_tag_list.txt and ram_tag_list_threshold.txt,
which the checkpoint does not hold), groundingdino_swint_ogc.pth (+ the bert-base-uncased directory its
text encoder was built from: config.json and vocab.txt) and sam_vit_h_4b8939.pth go through the key
maps beside each network (`bubogpt.grounding.{ram,grounding_dino,sam}.checkpoint`) into the model
directory's `grounding/` (layout in `bubogpt.grounding.pipeline`), with the BuboGPT files or alone,
into an existing model directory. Every file is checked before anything is written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
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
from bubogpt.weights import LLM_DIR, read_config, save_model

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
    grounding: GroundingFiles | None = None,
    grounding_preset: str | None = None,
) -> Path:
    """The BuboGPT files (and, with `grounding`, the grounding files) -> a new model directory."""
    from transformers import AutoConfig

    cfg = get_preset(preset)
    vicuna_dir = Path(vicuna_dir).resolve()
    found = llm_config_from_hf(AutoConfig.from_pretrained(str(vicuna_dir)))
    expected = cfg.llm
    for name in ("vocab_size", "hidden", "intermediate", "num_layers", "num_heads"):
        if getattr(found, name) != getattr(expected, name):
            raise CheckpointError(f"{vicuna_dir}: {name} is {getattr(found, name)}, preset {preset} expects {getattr(expected, name)}")
    model = build_from_official(preset, eva_vit_g, blip2, imagebind, bubogpt, allow_pickle=allow_pickle)
    pipeline = None
    if grounding is not None:  # checked before anything is written
        pipeline = build_grounding_from_official(
            grounding_preset or _grounding_preset_of(preset), grounding, allow_pickle=allow_pickle
        )
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
    if pipeline is not None:
        write_grounding(out, pipeline, grounding)
    return out


# --------------------------------------------------------------------------------------------------
# Grounding: RAM, Grounding DINO, SAM
# --------------------------------------------------------------------------------------------------

# What of a Hugging Face BERT directory the detector needs: sizes and the WordPiece vocabulary. The
# weights come from groundingdino_swint_ogc.pth (the official model fine-tunes its BERT).
TEXT_ENCODER_FILES = ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")


@dataclass(frozen=True)
class GroundingFiles:
    """The official grounding files. The tag list and thresholds may be left out only for a preset with
    a vocabulary of its own (`tiny`); RAM's are files of the RAM repository, not in the checkpoint."""

    sam: str | Path  # sam_vit_h_4b8939.pth
    groundingdino: str | Path  # groundingdino_swint_ogc.pth
    bert: str | Path  # bert-base-uncased directory: config.json + vocab.txt
    ram: str | Path  # ram_swin_large_14m.pth
    ram_tag_list: str | Path | None = None  # ram_tag_list.txt
    ram_thresholds: str | Path | None = None  # ram_tag_list_threshold.txt

    def provenance(self) -> dict[str, str | None]:
        return {k: (str(Path(v).resolve()) if v is not None else None) for k, v in dataclasses.asdict(self).items()}


def _grounding_preset_of(preset: str) -> str:
    from bubogpt.grounding.pipeline import GROUNDING_PRESET_OF

    if preset not in GROUNDING_PRESET_OF:
        raise CheckpointError(f"preset {preset!r} has no grounding preset; choose one of {sorted(GROUNDING_PRESET_OF.values())}")
    return GROUNDING_PRESET_OF[preset]


def _ram_vocabulary(files: GroundingFiles, tagger: str, default_threshold: float) -> tuple[list[str], torch.Tensor]:
    from bubogpt.grounding import ram

    if (files.ram_tag_list is None) != (files.ram_thresholds is None):
        raise CheckpointError("RAM's tag list and its thresholds go together: give both files or neither")
    if files.ram_tag_list is None:
        if tagger != "tiny":
            raise CheckpointError(
                f"tagger {tagger!r}: the tag list and thresholds are not in the RAM checkpoint; give RAM's "
                "ram_tag_list.txt and ram_tag_list_threshold.txt"
            )
        return list(ram.TINY_TAG_LIST), torch.tensor(ram.TINY_THRESHOLDS, dtype=torch.float32)
    try:
        tags = ram.load_tag_list(files.ram_tag_list)
        thresholds = ram.load_thresholds(files.ram_thresholds, len(tags), default=default_threshold)
    except ValueError as err:  # the messages name the file and the line
        raise CheckpointError(str(err)) from None
    return tags, thresholds


def _check_text_encoder_dir(bert: Path, vocab_size: int) -> None:
    from bubogpt.grounding.grounding_dino.preprocessing import load_tokenizer, special_token_ids

    tokenizer = load_tokenizer(bert)
    try:
        special_token_ids(tokenizer)
    except ValueError as err:
        raise CheckpointError(f"{bert}: {err}") from None
    if len(tokenizer) > vocab_size:
        raise CheckpointError(f"{bert}: {len(tokenizer)} vocabulary entries, but config.json's vocab_size is {vocab_size}")


def build_grounding_from_official(preset: str, files: GroundingFiles, allow_pickle: bool = False):
    """The grounding networks of `preset` (GROUNDING_PRESETS) filled from the official files, strictly.

    Returns the GroundingPipeline; nothing is written. Each loader fails (CheckpointError naming the
    keys) unless it fills every tensor of its network from the file.
    """
    from bubogpt.grounding import grounding_dino as gdino
    from bubogpt.grounding import ram, sam
    from bubogpt.grounding.grounding_dino.config import GDINO_PRESETS
    from bubogpt.grounding.grounding_dino.preprocessing import load_tokenizer
    from bubogpt.grounding.pipeline import GROUNDING_PRESETS, GroundingPipeline

    if preset not in GROUNDING_PRESETS:
        raise CheckpointError(f"unknown grounding preset {preset!r}; choose from {sorted(GROUNDING_PRESETS)}")
    cfg = GROUNDING_PRESETS[preset]
    rcfg = ram.RAM_PRESETS[cfg.tagger]
    tags, thresholds = _ram_vocabulary(files, cfg.tagger, rcfg.default_threshold)
    rcfg = dataclasses.replace(rcfg, num_tags=len(tags))
    bert = Path(files.bert)
    if not bert.is_dir():
        raise NotADirectoryError(f"{bert}: not a directory (give the bert-base-uncased directory: config.json, vocab.txt)")
    try:
        dcfg = GDINO_PRESETS[cfg.detector].with_text_encoder_dir(bert)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    _check_text_encoder_dir(bert, dcfg.text.vocab_size)
    scfg = sam.SAM_PRESETS[cfg.segmenter]

    # Built on CPU (the random init costs seconds at full size) rather than on meta: non-persistent
    # buffers such as Swin's relative position index are computed in the constructors.
    tagger = ram.RamTagger(rcfg)
    ram.load_ram_checkpoint(tagger, files.ram, allow_pickle=allow_pickle)
    detector = gdino.GroundingDino(dcfg)
    gdino.load_grounding_dino_checkpoint(detector, files.groundingdino, allow_pickle=allow_pickle)
    encoder, decoder = sam.SamImageEncoder(scfg), sam.SamPromptDecoder(scfg)
    sam.load_sam_checkpoint(encoder, decoder, files.sam, allow_pickle=allow_pickle)
    return GroundingPipeline(
        cfg, tagger, tags, thresholds, detector, load_tokenizer(bert), encoder, decoder,
        deleted_tags=tuple(rcfg.delete_tag_index),
    )


def write_grounding(model_dir: str | Path, pipeline, files: GroundingFiles) -> Path:
    """`model_dir/grounding/` from a converted pipeline, replacing what was there only once complete."""
    from bubogpt.grounding.pipeline import GROUNDING_DIR, save_grounding

    root = Path(model_dir)
    staging = Path(tempfile.mkdtemp(prefix=".grounding-", dir=root))
    try:
        written = save_grounding(pipeline, staging, provenance={"kind": "official", "files": files.provenance()})
        text_dir = written / "text_encoder"
        text_dir.mkdir()
        for name in TEXT_ENCODER_FILES:
            if (Path(files.bert) / name).is_file():
                shutil.copyfile(Path(files.bert) / name, text_dir / name)
        target = root / GROUNDING_DIR
        previous = None
        if target.exists():
            previous = root / f".grounding-previous-{os.getpid()}"
            target.rename(previous)
        written.rename(target)
        if previous is not None:
            shutil.rmtree(previous)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    cfg = pipeline.config
    log.info("wrote grounding (tagger %s, detector %s, segmenter %s) to %s", cfg.tagger, cfg.detector, cfg.segmenter, target)
    return target


def convert_grounding(
    model_dir: str | Path, files: GroundingFiles, preset: str | None = None, allow_pickle: bool = False
) -> Path:
    """The grounding files alone, into an existing model directory (its grounding/ is replaced).

    `preset` (GROUNDING_PRESETS) defaults to the one that goes with the directory's BuboGPT preset.
    """
    cfg = read_config(model_dir)  # WeightsError unless it is a model directory
    pipeline = build_grounding_from_official(preset or _grounding_preset_of(cfg.name), files, allow_pickle=allow_pickle)
    return write_grounding(model_dir, pipeline, files)
