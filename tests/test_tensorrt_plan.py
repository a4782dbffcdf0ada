"""What `bubo export --backend tensorrt` asks TensorRT for, per full-size network, checked without a GPU:
the plan table, and `build_engine`'s own configuration code run against a recording stand-in for the
tensorrt module (TensorRT itself needs a CUDA GPU)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bubogpt.grounding.grounding_dino import GDINO_PRESETS, resized_size
from bubogpt.grounding.pipeline import GROUNDING_PRESETS
from export.tensorrt_build import EnginePlan, build_engine, full_size_specs, plan_table

# network -> {input: (min, opt, max)}, written out from the full-size configs: bubogpt-7b (EVA-ViT-g at
# 224 px -> 257 x 1408 tokens, ImageBind audio 7 clips x 128 mel x 204 frames -> 229 x 768), RAM at
# 384 px, Grounding DINO (images resized to 800, longest side <= 1333; 256 text tokens), SAM ViT-H
# (1024 px -> 256 x 64 x 64 embeddings; up to 64 boxes).
EXPECTED = {
    "vision_encoder": {"PIXELS": ((1, 3, 224, 224), (4, 3, 224, 224), (8, 3, 224, 224))},
    "vision_qformer": {"FEATURES": ((1, 257, 1408), (4, 257, 1408), (8, 257, 1408))},
    "audio_encoder": {"CLIPS": ((1, 7, 1, 128, 204), (4, 7, 1, 128, 204), (8, 7, 1, 128, 204))},
    "audio_qformer": {"FEATURES": ((1, 229, 768), (4, 229, 768), (8, 229, 768))},
    "tagger": {"PIXELS": ((1, 3, 384, 384), (4, 3, 384, 384), (8, 3, 384, 384))},
    "detector": {
        "PIXELS": ((1, 3, 512, 512), (1, 3, 800, 1066), (1, 3, 1333, 1333)),
        **{name: ((1, 1), (1, 32), (1, 256)) for name in ("INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS")},
        "TEXT_SELF_ATTENTION_MASKS": ((1, 1, 1), (1, 32, 32), (1, 256, 256)),
        "POSITION_IDS": ((1, 1), (1, 32), (1, 256)),
    },
    "sam_image_encoder": {"PIXELS": ((1, 3, 1024, 1024), (2, 3, 1024, 1024), (4, 3, 1024, 1024))},
    "sam_prompt_decoder": {"EMBEDDINGS": ((1, 256, 64, 64),) * 3, "BOXES": ((1, 1, 4), (1, 8, 4), (1, 64, 4))},
}
TRITON_BATCH = {"detector": 0, "sam_prompt_decoder": 0, "sam_image_encoder": 4}


@pytest.fixture(scope="module")
def plans() -> dict[str, EnginePlan]:
    return {plan.name: plan for plan in plan_table("bubogpt-7b")}


def test_the_plan_of_every_full_size_network(plans):
    assert list(plans) == list(EXPECTED)
    for name, plan in plans.items():
        assert plan.profile == EXPECTED[name], name
        assert plan.fp16 and plan.workspace_gib == 8, name
        assert plan.triton_max_batch == TRITON_BATCH.get(name, 8), name


def test_the_profiles_cover_what_serving_sends(plans):
    detector = plans["detector"].profile["PIXELS"]
    cfg = GDINO_PRESETS["swint_ogc"]
    # every aspect ratio up to 1333 / 512 (about 2.6 : 1), either way round, at several image sizes
    for width, height in [(640, 480), (1920, 1080), (1080, 1920), (500, 500), (4000, 1540), (1540, 4000), (300, 200)]:
        h, w = resized_size(width, height, cfg.image_size, cfg.max_image_size)
        assert all(lo <= v <= hi for lo, v, hi in zip(detector[0][2:], (h, w), detector[2][2:])), (width, height, h, w)
    # beyond it the short side drops under the profile's 512 (a 3:1 panorama: 444 x 1332)
    assert resized_size(3000, 1000, cfg.image_size, cfg.max_image_size) == (444, 1332)
    assert plans["detector"].profile["INPUT_IDS"][2][1] == cfg.max_text_len  # tokenize cuts captions there
    assert plans["sam_prompt_decoder"].profile["BOXES"][2][1] >= GROUNDING_PRESETS["official"].max_entities


class _Recorder:
    """A stand-in for the tensorrt module: records what the build configures, builds nothing real."""

    def __init__(self):
        self.calls = []
        recorder = self

        class Config:
            def set_memory_pool_limit(self, pool, size):
                recorder.calls.append(("workspace", pool, size))

            def set_flag(self, flag):
                recorder.calls.append(("flag", flag))

            def add_optimization_profile(self, profile):
                recorder.calls.append(("profile", dict(profile.shapes)))

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return SimpleNamespace()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"engine"

        class OnnxParser:
            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                recorder.calls.append(("parse", Path(path).name))
                return True

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        self.module = SimpleNamespace(
            Logger=Logger, Builder=Builder, OnnxParser=OnnxParser,
            MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"), BuilderFlag=SimpleNamespace(FP16="FP16"),
        )


def test_build_engine_configures_tensorrt_as_planned(plans, tmp_path, monkeypatch):
    """The calls build_engine makes, for every full-size network, as repository.py calls it."""
    for spec in full_size_specs("bubogpt-7b"):
        recorder = _Recorder()
        monkeypatch.setitem(sys.modules, "tensorrt", recorder.module)
        onnx = tmp_path / f"{spec.name}.onnx"
        out = build_engine(onnx, tmp_path / f"{spec.name}.plan", spec, max_batch=max(1, spec.max_batch_size))
        assert out.read_bytes() == b"engine"
        assert recorder.calls == [
            ("parse", onnx.name),
            ("workspace", "WORKSPACE", 8 << 30),
            ("flag", "FP16"),
            ("profile", EXPECTED[spec.name]),
        ], spec.name


def test_the_documented_table_is_the_plan_table(plans):
    rows = [plan.row() for plan in plans.values()]
    columns = list(rows[0])
    table = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    table += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    doc = (Path(__file__).resolve().parents[1] / "docs" / "tensorrt_plans.md").read_text()
    assert "\n".join(table) in doc
