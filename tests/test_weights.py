"""Our format: exact round trips, strict loading, and the built-in default rebuilt bit for bit."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bubogpt.config import get_preset, nano
from bubogpt.defaults import DEFAULT_MODEL_DIR, DEFAULT_SEED, build_random_model, write_random_model
from bubogpt.model import MODALITY_COMPONENTS
from bubogpt.weights import WeightsError, load_model, read_config, save_model


@pytest.fixture(scope="module")
def random_model():
    return build_random_model(nano(), seed=123)


def test_round_trip_is_exact(tmp_path, random_model):
    model, llm, tokenizer = random_model
    save_model(model, tmp_path, llm=llm, tokenizer=tokenizer)
    loaded = load_model(tmp_path)
    assert read_config(tmp_path) == model.config
    for name in MODALITY_COMPONENTS:
        original, restored = getattr(model, name).state_dict(), getattr(loaded, name).state_dict()
        assert original.keys() == restored.keys()
        for key in original:
            assert torch.equal(original[key], restored[key]), f"{name}.{key}"
    from bubogpt.llm import load_llm

    llm2 = load_llm(tmp_path / "llm")
    for key, value in llm.state_dict().items():
        assert torch.equal(value, llm2.state_dict()[key]), key


def test_loading_names_missing_unexpected_and_misshaped_tensors(tmp_path, random_model):
    model, _, _ = random_model
    save_model(model, tmp_path)
    path = tmp_path / "vision_proj.safetensors"
    state = load_file(str(path))
    save_file({"weight": state["weight"]}, str(path))
    with pytest.raises(WeightsError, match=r"missing \['bias'\]"):
        load_model(tmp_path)
    save_file({**state, "extra": torch.zeros(1)}, str(path))
    with pytest.raises(WeightsError, match=r"unexpected \['extra'\]"):
        load_model(tmp_path)
    save_file({"weight": state["weight"][:, :-1].contiguous(), "bias": state["bias"]}, str(path))
    with pytest.raises(WeightsError, match=r"mis-shaped \['weight: file \[128, 63\] vs model \[128, 64\]'\]"):
        load_model(tmp_path)


def test_component_config_mismatch_is_refused(tmp_path, random_model):
    model, _, _ = random_model
    save_model(model, tmp_path)
    config = json.loads((tmp_path / "audio_encoder.json").read_text())
    config["depth"] = 3
    (tmp_path / "audio_encoder.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"audio_encoder.json: config differs .*depth"):
        load_model(tmp_path)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(WeightsError, match="not a BuboGPT model directory"):
        load_model(tmp_path)


def test_same_seed_same_weights_other_seed_other_weights():
    a, _, _ = build_random_model(nano(), seed=5)
    b, _, _ = build_random_model(nano(), seed=5)
    c, _, _ = build_random_model(nano(), seed=6)
    key = "vision_qformer"
    for name, tensor in getattr(a, key).state_dict().items():
        assert torch.equal(tensor, getattr(b, key).state_dict()[name])
    assert not torch.equal(a.vision_proj.weight, c.vision_proj.weight)


def _without_version(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("transformers_version", None)
    return data


def test_random_models_are_rebuilt_bit_for_bit(tmp_path):
    """`bubo init` is a pure function of preset and seed."""
    write_random_model(tmp_path / "a", preset="nano", seed=DEFAULT_SEED)
    write_random_model(tmp_path / "b", preset="nano", seed=DEFAULT_SEED)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for relative in files:
        if relative.name in ("config.json", "generation_config.json"):
            assert _without_version(tmp_path / "a" / relative) == _without_version(tmp_path / "b" / relative)
        else:
            assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative


def test_float16_on_disk_loads_as_the_float32_weights_rounded(tmp_path):
    """`bubo init --dtype float16` (the full-size presets' default): the modality side built one part at a
    time, each tensor on disk in float16, loading casts back; the LLM is created in float16."""
    write_random_model(tmp_path / "fp32", preset="nano", seed=DEFAULT_SEED)
    write_random_model(tmp_path / "fp16", preset="nano", seed=DEFAULT_SEED, dtype=torch.float16)
    full, half = load_model(tmp_path / "fp32"), load_model(tmp_path / "fp16")
    for name in MODALITY_COMPONENTS:
        stored = load_file(str(tmp_path / "fp16" / f"{name}.safetensors"))
        assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}, name
        for key, value in getattr(full, name).state_dict().items():
            want = value.half().float() if value.is_floating_point() else value
            assert torch.equal(getattr(half, name).state_dict()[key], want), (name, key)
    llm = load_file(str(next((tmp_path / "fp16" / "llm").glob("*.safetensors"))))
    assert {t.dtype for t in llm.values()} == {torch.float16}
    assert json.loads((tmp_path / "fp16" / "bubogpt.json").read_text())["provenance"]["dtype"] == "float16"
    grounding = load_file(str(tmp_path / "fp16" / "grounding" / "segmenter_encoder.safetensors"))
    assert {t.dtype for t in grounding.values() if t.is_floating_point()} == {torch.float16}


def test_official_size_random_grounding_has_rams_vocabulary_sizes(tmp_path):
    """`bubo init --preset bubogpt-7b` grounding: RAM's 4,585 tags and BERT-base's 30,522 words (built on
    the meta device: only the sizes are checked here; benchmarks/full_size.py builds it for real)."""
    from bubogpt.grounding.pipeline import build_random_grounding
    from bubogpt.grounding.ram import TINY_TAG_LIST

    with torch.device("meta"):
        pipeline = build_random_grounding("official", tmp_path / "grounding", tag_threshold=0.5)
    assert len(pipeline.tag_list) == len(set(pipeline.tag_list)) == 4585
    assert pipeline.tag_list[:len(TINY_TAG_LIST)] == list(TINY_TAG_LIST)
    assert list(pipeline.thresholds.shape) == [4585]
    vocab = (tmp_path / "grounding" / "text_encoder" / "vocab.txt").read_text().splitlines()
    assert len(vocab) == 30522 and set(pipeline.tag_list) <= set(vocab)


def test_builtin_default_is_the_trained_nano_model_with_its_recipe():
    """The committed default records the command, seed and recipe that produced it (`bubo train nano`),
    and that recipe is today's default recipe, so the command in the manifest reproduces it."""
    from training.nano.pipeline import Recipe

    manifest = json.loads((DEFAULT_MODEL_DIR / "bubogpt.json").read_text())
    provenance = manifest["provenance"]
    assert provenance["kind"] == "trained" and provenance["command"].startswith("bubo train nano --seed 0")
    assert provenance["recipe"] == dataclasses.asdict(Recipe(seed=provenance["seed"]))
    assert read_config(DEFAULT_MODEL_DIR) == get_preset("nano")
    report = json.loads((DEFAULT_MODEL_DIR / "training_report.json").read_text())
    assert report["recipe"] == provenance["recipe"] and report["total_minutes"] <= 75
    load_model(DEFAULT_MODEL_DIR)  # strict: every tensor present with its shape
