"""What a stage 1 / stage 2 run leaves in `output_dir`: `model/` in our format, and `bubogpt.pth` with
the official `bubogpt_7b.pth` keys (not to be confused with the top-level `export/`: ONNX / TensorRT).

`save_trained_model` writes every modality component with `bubogpt.weights.save_model` and puts the
(unchanged, frozen) LLM directory of the base model beside it, as a symlink or a copy.

`export_official` writes `{"model": {official key: tensor}}` using `bubogpt_key_map` of
`bubogpt.official_checkpoints`, inverted, so the file loads back through `load_bubogpt_checkpoint` (and
into the official code): audio Q-Former (`multimodal_joiner.modality_qformers.audio.Qformer.bert...`,
`...query_tokens`), both projections (`multimodal_joiner.modality_post_projectors.{audio,vision}.fc.*`),
and, on request, the vision Q-Former.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from bubogpt.model import BuboGPT
from bubogpt.official_checkpoints import bubogpt_key_map
from bubogpt.weights import LLM_DIR, MANIFEST, save_model


def official_state(model: BuboGPT, include_vision_qformer: bool = False) -> dict[str, torch.Tensor]:
    key_map = bubogpt_key_map(model.config.audio_qformer, model.config.vision_qformer if include_vision_qformer else None)
    states = {}
    result = {}
    for official, ours in key_map.items():
        module, _, name = ours.partition(".")
        if module not in states:
            states[module] = getattr(model, module).state_dict()
        result[official] = states[module][name].detach().to("cpu", copy=True).contiguous()
    return result


def export_official(model: BuboGPT, path: str | Path, include_vision_qformer: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Writes a `bubogpt_7b.pth`-compatible file (LAVIS layout `{"model": state, ...}`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": official_state(model, include_vision_qformer)}
    if extra:
        payload.update(extra)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def save_trained_model(model: BuboGPT, out: str | Path, base_llm_dir: str | Path, llm_output: str = "symlink",
                       provenance: dict[str, Any] | None = None) -> Path:
    out = Path(out)
    if out.is_symlink():
        raise FileExistsError(f"{out} is a symlink; choose another output directory")
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise FileExistsError(f"{out} exists and is not a model directory of ours; not overwriting it")
        shutil.rmtree(out)  # an earlier export of this run (e.g. before a resume): replace it
    save_model(model, out, provenance=provenance)
    source = Path(base_llm_dir).resolve()
    target = out / LLM_DIR
    if llm_output == "symlink":
        target.symlink_to(source, target_is_directory=True)
    else:
        shutil.copytree(source, target)
    return out
