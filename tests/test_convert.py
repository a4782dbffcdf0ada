"""`bubo convert`: official files (synthesized with the official key names) -> our format -> answers."""

import pytest
import torch

from bubogpt.config import nano
from bubogpt.convert import convert_official
from bubogpt.defaults import default_model_dir
from bubogpt.official_checkpoints import CheckpointError
from bubogpt.reference import ReferencePipeline
from bubogpt.weights import load_model
from test_official_checkpoints import (
    _Filler,
    official_blip2_state,
    official_bubogpt_state,
    official_eva_state,
    official_imagebind_state,
)


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    cfg, fill = nano(), _Filler(11)
    root = tmp_path_factory.mktemp("official")
    states = {
        "eva_vit_g": official_eva_state(cfg.vision, cfg.vision.depth + 1, fill),
        "blip2": official_blip2_state(cfg.vision, cfg.vision_qformer, fill),
        "imagebind": official_imagebind_state(cfg.audio, fill),
        "bubogpt": official_bubogpt_state(cfg, fill),
    }
    paths = {}
    for name, state in states.items():
        paths[name] = root / f"{name}.pth"
        torch.save(state, paths[name])
    return paths, states


def test_converted_model_holds_the_official_tensors_and_answers(tmp_path, official_files, image_bytes, audio_bytes):
    paths, states = official_files
    out = convert_official(tmp_path / "model", "nano", vicuna_dir=default_model_dir() / "llm", **paths)
    model = load_model(out)
    joiner = states["bubogpt"]["model"]
    assert torch.equal(model.vision_proj.weight, joiner["multimodal_joiner.modality_post_projectors.vision.fc.weight"])
    assert torch.equal(model.audio_proj.bias, joiner["multimodal_joiner.modality_post_projectors.audio.fc.bias"])
    assert torch.equal(model.vision_encoder.ln_vision.weight, states["blip2"]["model"]["ln_vision.weight"])
    assert torch.equal(model.vision_qformer.query_tokens, states["blip2"]["model"]["query_tokens"])
    assert torch.equal(model.audio_qformer.query_tokens, joiner["multimodal_joiner.modality_qformers.audio.query_tokens"])
    assert (out / "llm").is_symlink()
    result = ReferencePipeline.from_dir(out).generate("What is it?", image=image_bytes, audio=audio_bytes, max_new_tokens=4)
    assert len(result.token_ids) == 4 or result.finish_reason == "stop"


def test_vicuna_directory_must_match_the_preset(tmp_path, official_files):
    paths, _ = official_files
    with pytest.raises(CheckpointError, match="vocab_size is 1024, preset bubogpt-7b expects 32000"):
        convert_official(tmp_path / "model", "bubogpt-7b", vicuna_dir=default_model_dir() / "llm", **paths)


def test_a_missing_file_part_is_named(tmp_path, official_files):
    paths, states = official_files
    broken = dict(states["imagebind"])
    broken.pop("modality_trunks.audio.blocks.0.norm_1.weight")
    torch.save(broken, tmp_path / "imagebind.pth")
    with pytest.raises(CheckpointError, match="modality_trunks.audio.blocks.0.norm_1.weight"):
        convert_official(tmp_path / "model", "nano", vicuna_dir=default_model_dir() / "llm", **{**paths, "imagebind": tmp_path / "imagebind.pth"})


def test_bubogpt_and_grounding_files_together(tmp_path, official_files):
    from bubogpt.grounding.pipeline import load_grounding
    from test_grounding_convert import assert_holds_the_official_tensors, write_official_grounding_files

    paths, _ = official_files
    grounding, states = write_official_grounding_files(tmp_path / "grounding_files")
    out = convert_official(tmp_path / "model", "nano", vicuna_dir=default_model_dir() / "llm", grounding=grounding, **paths)
    assert_holds_the_official_tensors(load_grounding(out), states)
    load_model(out)
    # a bad grounding file stops the conversion before anything is written
    torch.save({}, tmp_path / "empty.pth")
    broken = type(grounding)(**{**grounding.__dict__, "sam": tmp_path / "empty.pth"})
    with pytest.raises(CheckpointError, match=r"image_encoder\.patch_embed\.proj\.weight <- official key"):
        convert_official(tmp_path / "model2", "nano", vicuna_dir=default_model_dir() / "llm", grounding=broken, **paths)
    assert not (tmp_path / "model2").exists()
