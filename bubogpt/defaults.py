"""The built-in default model, and deterministic random weights (`bubo init`).

bubogpt/default_model/ holds the `nano` preset trained on the synthetic world by `bubo train nano`
(training/nano/; the command, seed and recipe are in its bubogpt.json, the run's report in
training_report.json). `write_random_model` makes untrained weights of any preset from a seed,
bit for bit the same on every machine (tests, `bubo init`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from bubogpt.config import BuboConfig, get_preset
from bubogpt.llm import build_llm, save_llm
from bubogpt.model import BuboGPT
from bubogpt.tokenizer import build_tokenizer
from bubogpt.weights import llm_dir, save_model

DEFAULT_SEED = 0
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


# An untrained tagger's probabilities sit near 0.5: this threshold lets it propose a few tags so
# that the whole grounding path runs on the random default (RAM's own thresholds are ~0.7-0.9).
RANDOM_TAG_THRESHOLD = 0.5


def build_random_model(cfg: BuboConfig, seed: int):
    """(BuboGPT, LlamaForCausalLM, tokenizer) with weights drawn from `seed`, on CPU, float32."""
    with seeded(seed):
        model = BuboGPT(cfg).eval()
        llm = build_llm(cfg.llm)
    tokenizer = build_tokenizer(cfg.llm.vocab_size)
    return model, llm, tokenizer


@contextlib.contextmanager
def seeded(seed: int):
    """torch's global RNG seeded inside, restored after."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        yield
    finally:
        torch.random.set_rng_state(generator_state)


def write_random_model(out: str | Path, preset: str = "nano", seed: int = DEFAULT_SEED,
                       dtype: torch.dtype | None = None) -> Path:
    """Random weights of `preset` with its grounding models, in our format. `dtype` is the tensors'
    type on disk: float32 for nano, float16 (the official files' LLM type) for the others by default.
    A float16 model is built one part at a time (modality side, LLM created in float16, grounding)
    so that a full-size 7B model is written within 24 GiB."""
    from bubogpt.grounding.pipeline import GROUNDING_PRESET_OF, build_random_grounding, save_grounding

    cfg = get_preset(preset)
    dtype = dtype or (torch.float32 if preset == "nano" else torch.float16)
    provenance = {"kind": "random", "seed": seed, "command": f"bubo init --preset {preset} --seed {seed} --out DIR"}
    if dtype == torch.float32:
        model, llm, tokenizer = build_random_model(cfg, seed)
        out = save_model(model, out, llm=llm, tokenizer=tokenizer, provenance=provenance)
    else:
        provenance["dtype"] = str(dtype).removeprefix("torch.")
        with seeded(seed):
            model = BuboGPT(cfg).eval()
        out = save_model(model, out, provenance=provenance, dtype=dtype)
        del model
        with seeded(seed + 2):
            llm = build_llm(cfg.llm, dtype)
        save_llm(llm, build_tokenizer(cfg.llm.vocab_size), llm_dir(out))
        del llm
    grounding_preset = GROUNDING_PRESET_OF.get(preset)
    if grounding_preset is not None:
        with seeded(seed + 1):
            grounding = build_random_grounding(grounding_preset, Path(out) / "grounding", tag_threshold=RANDOM_TAG_THRESHOLD)
        save_grounding(grounding, out, dtype=None if dtype == torch.float32 else dtype)
    return out


def default_model_dir() -> Path:
    if not (DEFAULT_MODEL_DIR / "bubogpt.json").is_file():
        raise FileNotFoundError(
            f"the built-in default model is missing from {DEFAULT_MODEL_DIR}; "
            "recreate it with `bubo init --preset nano --out bubogpt/default_model`"
        )
    return DEFAULT_MODEL_DIR
