"""The built-in default model, and deterministic random weights (`bubo init`).

bubogpt/default_model/ holds the `nano` preset trained on the synthetic world by `bubo train nano`
(training/nano/; the command, seed and recipe are in its bubogpt.json, the run's report in
training_report.json). `write_random_model` makes untrained weights of any preset from a seed,
bit for bit the same on every machine (tests, `bubo init`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bubogpt.config import BuboConfig, get_preset
from bubogpt.llm import build_llm
from bubogpt.model import BuboGPT
from bubogpt.tokenizer import build_tokenizer
from bubogpt.weights import save_model

DEFAULT_SEED = 0
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


# An untrained tagger's probabilities sit near 0.5: this threshold lets it propose a few tags so
# that the whole grounding path runs on the random default (RAM's own thresholds are ~0.7-0.9).
RANDOM_TAG_THRESHOLD = 0.5


def build_random_model(cfg: BuboConfig, seed: int):
    """(BuboGPT, LlamaForCausalLM, tokenizer) with weights drawn from `seed`, on CPU, float32."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = BuboGPT(cfg).eval()
        llm = build_llm(cfg.llm)
    finally:
        torch.random.set_rng_state(generator_state)
    tokenizer = build_tokenizer(cfg.llm.vocab_size)
    return model, llm, tokenizer


def write_random_model(out: str | Path, preset: str = "nano", seed: int = DEFAULT_SEED) -> Path:
    from bubogpt.grounding.pipeline import build_random_grounding, save_grounding

    cfg = get_preset(preset)
    model, llm, tokenizer = build_random_model(cfg, seed)
    provenance = {"kind": "random", "seed": seed, "command": f"bubo init --preset {preset} --seed {seed} --out DIR"}
    out = save_model(model, out, llm=llm, tokenizer=tokenizer, provenance=provenance)
    if preset == "nano":  # tiny grounding models ride along with the tiny model
        generator_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed + 1)
            grounding = build_random_grounding("tiny", Path(out) / "grounding", tag_threshold=RANDOM_TAG_THRESHOLD)
        finally:
            torch.random.set_rng_state(generator_state)
        save_grounding(grounding, out)
    return out


def default_model_dir() -> Path:
    if not (DEFAULT_MODEL_DIR / "bubogpt.json").is_file():
        raise FileNotFoundError(
            f"the built-in default model is missing from {DEFAULT_MODEL_DIR}; "
            "recreate it with `bubo init --preset nano --out bubogpt/default_model`"
        )
    return DEFAULT_MODEL_DIR
