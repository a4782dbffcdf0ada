"""The plain PyTorch reference pipeline on the built-in nano model."""

import time

import pytest
import torch

from bubogpt.prompt import Turn
from bubogpt.reference import ReferencePipeline


@pytest.fixture(scope="module")
def pipeline():
    return ReferencePipeline.from_dir()


def test_image_audio_text_answer_is_fast_and_deterministic(pipeline, image_bytes, audio_bytes):
    start = time.perf_counter()
    first = pipeline.generate("What do you see and hear?", image=image_bytes, audio=audio_bytes, max_new_tokens=24)
    elapsed = time.perf_counter() - start
    second = pipeline.generate("What do you see and hear?", image=image_bytes, audio=audio_bytes, max_new_tokens=24)
    assert first.token_ids == second.token_ids and first.text == second.text
    assert len(first.token_ids) > 0
    assert first.prompt_tokens == len(pipeline.layout([Turn("user", "What do you see and hear?")], ["image", "audio"]))
    assert elapsed < 30  # "in seconds": generous bound for a loaded 2-core CI machine


def test_greedy_loop_equals_transformers_generate(pipeline, image_bytes):
    embeds = pipeline.prompt_embeds([Turn("user", "Describe the image.")], image_embeds=pipeline.embed_image(image_bytes))
    ours = pipeline.generate_from_embeds(embeds, max_new_tokens=20)
    with torch.inference_mode():
        theirs = pipeline.llm.generate(
            inputs_embeds=embeds[None], max_new_tokens=len(ours.token_ids), do_sample=False,
            attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long), pad_token_id=0,
        )
    assert theirs[0].tolist()[: len(ours.token_ids)] == ours.token_ids


def test_modality_embeddings_land_in_their_slots(pipeline, image_bytes, audio_bytes):
    image = pipeline.embed_image(image_bytes)
    audio = pipeline.embed_audio(audio_bytes)
    assert image.shape == audio.shape == (32, pipeline.config.llm.hidden)
    assert not torch.allclose(image, audio)
    turns = [Turn("user", "hi")]
    embeds = pipeline.prompt_embeds(turns, image_embeds=image, audio_embeds=audio)
    (image_start, _), (audio_start, _) = pipeline.layout(turns, ["image", "audio"]).slots
    assert torch.equal(embeds[image_start : image_start + 32], image)
    assert torch.equal(embeds[audio_start : audio_start + 32], audio)


def test_multi_turn_prompt_contains_the_previous_answer(pipeline, image_bytes):
    turns = [Turn("user", "Describe the image."), Turn("assistant", "A red ball."), Turn("user", "And the colour?")]
    layout = pipeline.layout(turns, ["image"])
    text = pipeline.tokenizer.decode([t for t, is_text in zip(layout.token_ids, layout.is_text) if is_text])
    assert "A red ball.###Human: And the colour?###Assistant:" in text
    result = pipeline.generate(turns, image=image_bytes, max_new_tokens=8)
    assert result.prompt_tokens == len(layout)
