"""The grounding pipeline of the paper: RAM tags -> Grounding DINO boxes -> SAM masks.

    image -> tagger (RAM) -> tags -> "tag1,tag2." -> detector (Grounding DINO, box 0.25 / text 0.2)
          -> boxes in original pixels -> segmenter (SAM, one mask per box) -> small holes filled
          -> GroundedEntity(label, score, box, mask)

Entity matching against the answer text lives in `matching/`; the server runs it when the answer
is complete. This module is the PyTorch reference; serving runs the same networks exported to
Triton and the same pre/post-processing functions (model_repository/grounding_*).

Stored in a model directory as `grounding/`: `grounding.json` (presets, thresholds, tag list; for
converted official files, their provenance: `bubogpt.convert`),
`tagger.safetensors`, `detector.safetensors`, `text_encoder/` (the detector's BERT config + vocab),
`segmenter_encoder.safetensors`, `segmenter_decoder.safetensors`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from bubogpt.grounding import grounding_dino as gdino
from bubogpt.grounding import ram, sam
from bubogpt.grounding.grounding_dino.config import GDINO_PRESETS
from bubogpt.grounding.grounding_dino.preprocessing import caption_from_tags, load_tokenizer
from bubogpt.grounding.schema import GroundedEntity

log = logging.getLogger(__name__)

GROUNDING_DIR = "grounding"


@dataclass(frozen=True)
class GroundingConfig:
    tagger: str = "swin_l_384"  # key of ram.RAM_PRESETS
    detector: str = "swint_ogc"  # key of GDINO_PRESETS
    segmenter: str = "vit_h"  # key of sam.SAM_PRESETS
    box_threshold: float = 0.25
    text_threshold: float = 0.2
    # BuboGPT fills holes under 400 px in every mask (SAM's remove_small_regions, mode "holes")
    hole_area: int = 400
    max_entities: int = 32


GROUNDING_PRESETS = {
    "official": GroundingConfig(),
    "tiny": GroundingConfig(tagger="tiny", detector="tiny", segmenter="tiny", hole_area=20),
}
# The grounding preset that goes with each BuboGPT preset (bubogpt.config.PRESETS): `bubo info`
# lists it beside the preset's networks, `bubo convert` builds it unless told otherwise.
GROUNDING_PRESET_OF = {"bubogpt-7b": "official", "nano": "tiny"}


@dataclass
class GroundingResult:
    tags: list[str]
    entities: list[GroundedEntity]
    caption: str = ""
    timings: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# post-processing helpers
# ------------------------------------------------------------------------------------------------


def label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of a bool mask (0 = background, 1.. = components), as OpenCV's
    connectedComponents (which SAM's remove_small_regions uses) with its default connectivity 8."""
    from scipy import ndimage

    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return labels


def fill_small_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """Fills background components smaller than `max_area` pixels (SAM's remove_small_regions "holes").

    Only the mask's bounding box (plus a one-pixel background frame) is labelled: a hole lies inside
    it, and everything that touches the frame is the outer background, which is never filled here
    (SAM would fill an outer background smaller than the threshold too; a mask that leaves under
    `max_area` pixels of the image uncovered is the only case where the two differ).
    """
    if max_area <= 0 or mask.all() or not mask.any():
        return mask
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = np.zeros((y1 - y0 + 2, x1 - x0 + 2), dtype=bool)
    crop[1:-1, 1:-1] = mask[y0:y1, x0:x1]
    holes = label_components(~crop)
    outer = holes[0, 0]
    counts = np.bincount(holes.reshape(-1))
    small = [label for label in np.nonzero(counts[1:] < max_area)[0] + 1 if label != outer]
    if not small:
        return mask
    filled = mask.copy()
    filled[y0:y1, x0:x1] |= np.isin(holes[1:-1, 1:-1], small)
    return filled


def clean_phrase(phrase: str) -> str:
    """Detector phrases are decoded tokens of a comma-joined caption: drop BERT's special tokens
    ([SEP] can pass the text threshold too) and tidy the punctuation."""
    for special in ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"):
        phrase = phrase.replace(special, " ")
    parts = [" ".join(part.split()) for part in phrase.split(",")]
    return ", ".join(part for part in parts if part)


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return (min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height))


# ------------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------------


class GroundingPipeline:
    def __init__(
        self,
        cfg: GroundingConfig,
        tagger: ram.RamTagger,
        tag_list: list[str],
        thresholds: torch.Tensor,
        detector: gdino.GroundingDino,
        tokenizer,
        segmenter_encoder: sam.SamImageEncoder,
        segmenter_decoder: sam.SamPromptDecoder,
        deleted_tags: tuple[int, ...] = (),
    ):
        self.config = cfg
        self.tagger = tagger.eval()
        self.tag_list = list(tag_list)
        self.thresholds = thresholds
        self.deleted_tags = tuple(deleted_tags)
        self.detector = detector.eval()
        self.tokenizer = tokenizer
        self.segmenter_encoder = segmenter_encoder.eval()
        self.segmenter_decoder = segmenter_decoder.eval()

    @torch.inference_mode()
    def tags(self, image: Image.Image) -> list[str]:
        probs = self.tagger(ram.preprocess_image(image, self.tagger.config)[None])[0]
        return ram.select_tags(probs, self.thresholds, self.tag_list, self.deleted_tags)

    @torch.inference_mode()
    def detect(self, image: Image.Image, caption: str) -> list[gdino.Detection]:
        return gdino.ground(self.detector, self.tokenizer, image, caption, self.config.box_threshold, self.config.text_threshold)

    @torch.inference_mode()
    def segment(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """One bool mask [H, W] per xyxy box (original pixels)."""
        scfg = self.segmenter_encoder.config
        pixels, input_hw = sam.preprocess_image(np.asarray(image, dtype=np.uint8), scfg)
        embeddings = self.segmenter_encoder(torch.from_numpy(pixels)[None])
        original_hw = (image.height, image.width)
        prompts = torch.from_numpy(sam.transform_boxes(boxes, original_hw, scfg))[None]
        low_res, _ = self.segmenter_decoder(embeddings, prompts)
        logits = sam.postprocess_masks(low_res[0], input_hw, original_hw, scfg)
        masks = sam.masks_from_logits(logits).numpy()
        return np.stack([fill_small_holes(m, self.config.hole_area) for m in masks])

    def __call__(self, image: Image.Image) -> GroundingResult:
        tags = self.tags(image)
        if not tags:
            return GroundingResult(tags=[], entities=[])
        caption = caption_from_tags(tags)
        detections = self.detect(image, caption)[: self.config.max_entities]
        detections = [d._replace(phrase=clean_phrase(d.phrase)) for d in detections]
        detections = [d for d in detections if d.phrase]
        if not detections:
            return GroundingResult(tags=tags, entities=[], caption=caption)
        boxes = np.array([clip_box(d.box_xyxy, image.width, image.height) for d in detections], dtype=np.float32)
        masks = self.segment(image, boxes)
        entities = [
            GroundedEntity(index=i, label=d.phrase, score=d.score, box_xyxy=tuple(map(float, box)), mask=mask)
            for i, (d, box, mask) in enumerate(zip(detections, boxes, masks))
        ]
        return GroundingResult(tags=tags, entities=entities, caption=caption)


# ------------------------------------------------------------------------------------------------
# storage in our format
# ------------------------------------------------------------------------------------------------

TINY_TEXT_WORDS = (
    "a", "the", "and", "of", "in", "on", "with", "image", "photo",
)


def write_text_encoder_dir(path: Path, words: list[str], vocab_size: int, hidden: int, layers: int, heads: int,
                           intermediate: int, max_positions: int) -> Path:
    """A local BERT directory (config.json + WordPiece vocab.txt) for a small detector."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "!"]
    for word in words:
        if word not in vocab:
            vocab.append(word)
    if len(vocab) > vocab_size:
        raise ValueError(f"{len(vocab)} vocabulary entries do not fit vocab_size {vocab_size}")
    vocab += [f"[unused{i}]" for i in range(vocab_size - len(vocab))]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = {
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": vocab_size, "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": intermediate,
        "hidden_act": "gelu", "max_position_embeddings": max_positions, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12, "position_embedding_type": "absolute", "pad_token_id": 0,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}) + "\n")
    return path


def build_random_grounding(preset: str, out: Path, tag_threshold: float | None = None) -> GroundingPipeline:
    """Random-weight grounding models (call under a seeded RNG), with a BERT directory written to `out`.

    `tag_threshold` replaces every per-tag threshold: an untrained tagger's probabilities sit near
    0.5, under RAM's thresholds, and would never propose a tag. The official preset has RAM's sizes
    (4,585 tags, BERT-base's 30,522-word vocabulary) but not its words, which live in files we do not
    ship (`bubo convert --ram-tag-list`): the tiny list's nouns come first, then `tag0024`... fill it.
    """
    cfg = GROUNDING_PRESETS[preset]
    rcfg = ram.RAM_PRESETS[cfg.tagger]
    tag_list = list(ram.TINY_TAG_LIST)[:rcfg.num_tags]
    tag_list += [f"tag{i:04d}" for i in range(len(tag_list), rcfg.num_tags)]
    thresholds = torch.tensor(ram.TINY_THRESHOLDS[:rcfg.num_tags], dtype=torch.float32)
    thresholds = torch.cat([thresholds, torch.full((rcfg.num_tags - len(thresholds),), 0.7)])
    if tag_threshold is not None:
        thresholds = torch.full_like(thresholds, tag_threshold)
    text = GDINO_PRESETS[cfg.detector].text
    text_dir = write_text_encoder_dir(
        out / "text_encoder", list(TINY_TEXT_WORDS) + tag_list, text.vocab_size, text.hidden, text.num_layers,
        text.num_heads, text.intermediate, text.max_positions,
    )
    detector = gdino.build_grounding_dino(cfg.detector, text_dir)
    scfg = sam.SAM_PRESETS[cfg.segmenter]
    return GroundingPipeline(
        cfg, ram.RamTagger(rcfg), tag_list, thresholds, detector, load_tokenizer(text_dir),
        sam.SamImageEncoder(scfg), sam.SamPromptDecoder(scfg), deleted_tags=tuple(rcfg.delete_tag_index),
    )


def _save_tensors(module: torch.nn.Module, path: Path, dtype: torch.dtype | None = None) -> None:
    from bubogpt.weights import tensors_to_save

    save_file(tensors_to_save(module, dtype), str(path))


def _load_tensors(module: torch.nn.Module, path: Path) -> None:
    from bubogpt.weights import check_state_dict

    state = load_file(str(path))
    check_state_dict(module, state, str(path))
    module.load_state_dict(state, strict=True)


def save_grounding(pipeline: GroundingPipeline, model_dir: str | Path, provenance: dict | None = None,
                   dtype: torch.dtype | None = None) -> Path:
    """Writes grounding.json and the four tensor files (floating point ones cast to `dtype` when
    given); the text encoder directory is the caller's."""
    out = Path(model_dir) / GROUNDING_DIR
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "config": dataclasses.asdict(pipeline.config),
        "tag_list": pipeline.tag_list,
        "thresholds": [float(t) for t in pipeline.thresholds.tolist()],
        "deleted_tags": list(pipeline.deleted_tags),
    }
    if provenance is not None:  # only then: random models' grounding.json stays as it was
        manifest["provenance"] = provenance
    (out / "grounding.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _save_tensors(pipeline.tagger, out / "tagger.safetensors", dtype)
    _save_tensors(pipeline.detector, out / "detector.safetensors", dtype)
    _save_tensors(pipeline.segmenter_encoder, out / "segmenter_encoder.safetensors", dtype)
    _save_tensors(pipeline.segmenter_decoder, out / "segmenter_decoder.safetensors", dtype)
    return out


def has_grounding(model_dir: str | Path) -> bool:
    return (Path(model_dir) / GROUNDING_DIR / "grounding.json").is_file()


def load_grounding(model_dir: str | Path) -> GroundingPipeline:
    root = Path(model_dir) / GROUNDING_DIR
    if not (root / "grounding.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no grounding models ({root / 'grounding.json'} not found)")
    manifest = json.loads((root / "grounding.json").read_text())
    cfg = GroundingConfig(**manifest["config"])
    rcfg = dataclasses.replace(ram.RAM_PRESETS[cfg.tagger], num_tags=len(manifest["tag_list"]))
    tagger = ram.RamTagger(rcfg)
    detector = gdino.build_grounding_dino(cfg.detector, root / "text_encoder")
    scfg = sam.SAM_PRESETS[cfg.segmenter]
    encoder, decoder = sam.SamImageEncoder(scfg), sam.SamPromptDecoder(scfg)
    for module, name in ((tagger, "tagger"), (detector, "detector"), (encoder, "segmenter_encoder"), (decoder, "segmenter_decoder")):
        _load_tensors(module, root / f"{name}.safetensors")
    return GroundingPipeline(
        cfg, tagger, manifest["tag_list"], torch.tensor(manifest["thresholds"], dtype=torch.float32), detector,
        load_tokenizer(root / "text_encoder"), encoder, decoder, deleted_tags=tuple(manifest.get("deleted_tags", ())),
    )
