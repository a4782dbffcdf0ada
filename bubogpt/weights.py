"""Our checkpoint format: one safetensors file + one JSON config per component, and an HF LLM dir.

    MODEL_DIR/
      bubogpt.json                      format tag, preset name, full BuboConfig, provenance
      vision_encoder.safetensors        + vision_encoder.json (that component's config)
      vision_qformer.safetensors        + vision_qformer.json
      vision_proj.safetensors           + vision_proj.json
      audio_encoder.safetensors ...     (same for audio_*)
      llm/                              Hugging Face LLaMA directory (config, weights, tokenizer)

Loading is strict: a missing, unexpected or mis-shaped tensor raises WeightsError naming it.
Saving then loading round-trips every tensor bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bubogpt.config import BuboConfig
from bubogpt.model import MODALITY_COMPONENTS, BuboGPT

log = logging.getLogger(__name__)

FORMAT_NAME = "bubogpt"
FORMAT_VERSION = 1
MANIFEST = "bubogpt.json"
LLM_DIR = "llm"


class WeightsError(ValueError):
    """A model directory or tensor file that does not match the model; the message lists the names."""


def component_config(cfg: BuboConfig, component: str) -> dict[str, Any]:
    section = {
        "vision_encoder": cfg.vision,
        "vision_qformer": cfg.vision_qformer,
        "audio_encoder": cfg.audio,
        "audio_qformer": cfg.audio_qformer,
    }
    if component in section:
        return dataclasses.asdict(section[component])
    if component == "vision_proj":
        return {"in_features": cfg.vision_qformer.hidden, "out_features": cfg.llm.hidden}
    if component == "audio_proj":
        return {"in_features": cfg.audio_qformer.hidden, "out_features": cfg.llm.hidden}
    raise KeyError(component)


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raises WeightsError listing missing, unexpected and mis-shaped tensors."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{name}: file {list(state[name].shape)} vs model {list(expected[name].shape)}"
        for name in set(expected) & set(state)
        if state[name].shape != expected[name].shape
    )
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    if misshaped:
        problems.append(f"mis-shaped {misshaped}")
    if problems:
        raise WeightsError(f"{source}: " + "; ".join(problems))


def tensors_to_save(module: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The module's state as safetensors takes it: contiguous clones (it refuses shared or strided
    storage), floating-point tensors cast to `dtype` when given (loading casts them back)."""
    return {k: v.detach().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous().clone()
            for k, v in module.state_dict().items()}


def save_component(module: nn.Module, config: dict[str, Any], directory: Path, name: str,
                   dtype: torch.dtype | None = None) -> None:
    """`dtype` casts floating-point tensors on disk (loading casts them back to the module's)."""
    tensors = tensors_to_save(module, dtype)
    save_file(tensors, str(directory / f"{name}.safetensors"), metadata={"component": name})
    (directory / f"{name}.json").write_text(json.dumps(config, indent=2) + "\n")


def load_component(module: nn.Module, config: dict[str, Any], directory: Path, name: str) -> None:
    path = directory / f"{name}.safetensors"
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    config_path = directory / f"{name}.json"
    if config_path.is_file():
        stored = json.loads(config_path.read_text())
        stored = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()}
        if stored != config:
            diff = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
            raise WeightsError(f"{config_path}: config differs from the model's in {diff}")
    state = load_file(str(path))
    check_state_dict(module, state, str(path))
    module.load_state_dict(state, strict=True)


def save_model(
    model: BuboGPT,
    directory: str | Path,
    llm: nn.Module | None = None,
    tokenizer=None,
    provenance: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Writes every component (and the LLM directory when given) in our format; `dtype` casts the
    components' floating-point tensors on disk (the LLM is saved in its own dtype)."""
    from bubogpt.llm import save_llm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in MODALITY_COMPONENTS:
        save_component(getattr(model, name), component_config(model.config, name), directory, name, dtype)
    if llm is not None:
        if tokenizer is None:
            raise ValueError("save_model: an LLM needs its tokenizer")
        save_llm(llm, tokenizer, directory / LLM_DIR)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "preset": model.config.name,
        "config": model.config.to_dict(),
        "provenance": provenance or {},
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("saved %s model to %s", model.config.name, directory)
    return directory


def read_config(directory: str | Path) -> BuboConfig:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise WeightsError(f"{directory}: not a BuboGPT model directory ({MANIFEST} not found)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
        raise WeightsError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {FORMAT_NAME!r} version {FORMAT_VERSION}"
        )
    return BuboConfig.from_dict(manifest["config"])


def load_model(directory: str | Path) -> BuboGPT:
    """The modality side (encoders, Q-Formers, projections) from our format, in eval mode."""
    directory = Path(directory)
    cfg = read_config(directory)
    model = BuboGPT(cfg)
    for name in MODALITY_COMPONENTS:
        load_component(getattr(model, name), component_config(cfg, name), directory, name)
    return model.eval()


def llm_dir(directory: str | Path) -> Path:
    return Path(directory) / LLM_DIR
