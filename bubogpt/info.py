"""Per-component parameter counts and tensor shapes of a preset (`bubo info`).

Models are built on the meta device: counting the 7B preset allocates no memory.
"""

from __future__ import annotations

import torch

from bubogpt.config import BuboConfig
from bubogpt.model import COMPONENTS, BuboGPT


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


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


def describe(cfg: BuboConfig) -> list[dict]:
    from bubogpt.llm import build_llm

    with torch.device("meta"):
        model = BuboGPT(cfg)
        llm = build_llm(cfg.llm)
    modules = {name: getattr(model, name) for name in COMPONENTS if name != "llm"}
    modules["llm"] = llm
    shapes = component_shapes(cfg)
    return [
        {"component": name, "params": count_parameters(modules[name]), "input": shapes[name][0], "output": shapes[name][1]}
        for name in COMPONENTS
    ]
