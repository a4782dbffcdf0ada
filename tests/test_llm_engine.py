"""vLLM with injected modality embeddings vs the plain PyTorch reference, token for token."""

import asyncio
import time

import pytest
import torch

from bubogpt.defaults import default_model_dir
from bubogpt.prompt import Turn
from conftest import MEDIA_CASES, make_audio_bytes, make_image_bytes, reference_answer
from serving.errors import InvalidArgument, PartUnavailable
from serving.llm_engine import (
    ModalityEmbeds,
    SamplingOptions,
    TextDelta,
    TorchEngine,
    VLLMEngine,
)

GREEDY = SamplingOptions(temperature=0.0, max_new_tokens=24)


@pytest.fixture(scope="module")
def engine(loop):
    engine = VLLMEngine(default_model_dir() / "llm")
    loop.run(engine.start(), timeout=600)
    yield engine
    loop.run(engine.stop())


async def collect(engine, turns, modalities=(), sampling=GREEDY, request_id=None):
    text, token_ids, finished = "", [], None
    async for event in engine.generate(turns, modalities, sampling, request_id=request_id):
        if isinstance(event, TextDelta):
            text += event.text
            token_ids += event.token_ids
        else:
            finished = event
    return text, token_ids, finished


def modalities_for(reference, image=None, audio=None):
    items = []
    if image is not None:
        items.append(ModalityEmbeds("image", reference.embed_image(image)))
    if audio is not None:
        items.append(ModalityEmbeds("audio", reference.embed_audio(audio)))
    return items


def expected(reference, turns, modalities, max_new_tokens=24):
    embeds = {m.modality: m.embeds for m in modalities}
    return reference_answer(reference, turns, embeds.get("image"), embeds.get("audio"), max_new_tokens)


CASES = MEDIA_CASES


@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_tokens_equal_the_reference(loop, engine, reference, case):
    turns = [Turn("user", "What is in it?")]
    modalities = modalities_for(reference, **CASES[case])
    text, token_ids, finished = loop.run(collect(engine, turns, modalities))
    oracle = expected(reference, turns, modalities)
    assert token_ids == oracle.token_ids
    assert text.strip() == oracle.text
    assert finished.completion_tokens == len(oracle.token_ids)
    assert finished.prompt_tokens == oracle.prompt_tokens
    assert finished.finish_reason == ("length" if oracle.finish_reason == "length" else "stop")


def test_multi_turn_chat_equals_the_reference(loop, engine, reference):
    modalities = modalities_for(reference, image=make_image_bytes(seed=5))
    turns = [Turn("user", "Describe the image.")]
    first_text, first_ids, _ = loop.run(collect(engine, turns, modalities))
    turns = turns + [Turn("assistant", first_text.strip()), Turn("user", "What colour is the ball?")]
    text, token_ids, _ = loop.run(collect(engine, turns, modalities))
    oracle = expected(reference, turns, modalities)
    assert token_ids == oracle.token_ids


def test_sixteen_concurrent_streams_all_match(loop, engine, reference):
    requests = []
    for i in range(16):
        turns = [Turn("user", f"Question number {i}: what do you see?")]
        modalities = modalities_for(reference, image=make_image_bytes(seed=10 + i % 4)) if i % 2 else []
        requests.append((turns, modalities))

    async def run_all():
        return await asyncio.gather(*(collect(engine, t, m, SamplingOptions(max_new_tokens=16)) for t, m in requests))

    results = loop.run(run_all())
    for (turns, modalities), (_, token_ids, _) in zip(requests, results):
        assert token_ids == expected(reference, turns, modalities, max_new_tokens=16).token_ids


def test_cancelled_stream_frees_its_slot(loop, engine):
    async def cancel_after_first_delta():
        stream = engine.generate([Turn("user", "Tell me a long story.")], (), SamplingOptions(max_new_tokens=1500))
        async for event in stream:
            if isinstance(event, TextDelta):
                break
        await stream.aclose()  # what the frontend does when the client goes away
        for _ in range(100):
            if engine.num_unfinished == 0:
                return True
            await asyncio.sleep(0.05)
        return False

    assert loop.run(cancel_after_first_delta())


@pytest.mark.parametrize(
    "embeds, message",
    [
        (torch.zeros(32, 64), r"image_embeddings: shape must be \[32, 128\], got \[32, 64\]"),
        (torch.zeros(31, 128), r"image_embeddings: shape must be \[32, 128\]"),
        (torch.full((32, 128), float("nan")), "image_embeddings: contains NaN"),
        (torch.zeros(32, 128, dtype=torch.long), "image_embeddings: dtype must be floating point"),
    ],
)
def test_bad_embeddings_are_rejected_and_the_engine_keeps_serving(loop, engine, reference, embeds, message):
    with pytest.raises(InvalidArgument, match=message):
        loop.run(collect(engine, [Turn("user", "hi")], [ModalityEmbeds("image", embeds)]))
    _, token_ids, _ = loop.run(collect(engine, [Turn("user", "hi")]))
    assert token_ids == expected(reference, [Turn("user", "hi")], []).token_ids


def test_over_long_prompt_and_bad_sampling_are_rejected(loop, engine):
    with pytest.raises(InvalidArgument, match="turns: the prompt takes .* positions, the model's context is 2048"):
        loop.run(collect(engine, [Turn("user", "word " * 3000)]))
    with pytest.raises(InvalidArgument, match="sampling.top_p"):
        loop.run(collect(engine, [Turn("user", "hi")], (), SamplingOptions(top_p=0.0)))
    with pytest.raises(InvalidArgument, match=r"turns\[0\].text: contains the reserved sequence '###'"):
        loop.run(collect(engine, [Turn("user", "a ### b")]))


def test_min_new_tokens_holds_off_the_end_in_both_engines(loop, engine, reference):
    """Neither EOS nor `###` ends an answer before min_new_tokens: vLLM (min_tokens) and the PyTorch engine
    give the reference's tokens, and the answer is longer than the one that ends on its own."""
    turns = [Turn("user", "What is in it?")]
    modalities = modalities_for(reference, image=make_image_bytes(seed=3))
    short = expected(reference, turns, modalities, max_new_tokens=160)
    assert short.finish_reason == "stop", short  # the answer ends on its own...
    least = len(short.token_ids) + 16  # ...and is made to go on past its end
    embeds = {m.modality: m.embeds for m in modalities}
    oracle = reference.generate_from_embeds(reference.prompt_embeds(turns, embeds["image"], None), max_new_tokens=least + 48,
                                            min_new_tokens=least)
    assert len(oracle.token_ids) > least and oracle.token_ids[: len(short.token_ids) - 1] == short.token_ids[:-1]
    sampling = SamplingOptions(max_new_tokens=least + 48, min_new_tokens=least)
    text, vllm_ids, finished = loop.run(collect(engine, turns, modalities, sampling))
    assert vllm_ids == oracle.token_ids and text.strip() == oracle.text
    assert finished.finish_reason == ("length" if oracle.finish_reason == "length" else "stop")
    torch_engine = TorchEngine(default_model_dir() / "llm")
    loop.run(torch_engine.start())
    assert loop.run(collect(torch_engine, turns, modalities, sampling))[1] == oracle.token_ids
    with pytest.raises(InvalidArgument, match=r"sampling.min_new_tokens: must be in \[0, max_new_tokens = 8\], got 9"):
        loop.run(collect(engine, turns, (), SamplingOptions(max_new_tokens=8, min_new_tokens=9)))


def test_seeded_sampling_is_repeatable(loop, engine):
    sampling = SamplingOptions(temperature=1.0, top_p=0.9, max_new_tokens=12, seed=7)
    first = loop.run(collect(engine, [Turn("user", "hi")], (), sampling))[1]
    second = loop.run(collect(engine, [Turn("user", "hi")], (), sampling))[1]
    assert first == second


def engine_core_processes():
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if "EngineCore" in " ".join(p.cmdline()) + p.name()]


def test_a_dead_engine_is_reported_and_restarted(loop, engine, reference):
    import signal

    cores = engine_core_processes()
    assert cores, "vLLM's engine core process was not found"
    for process in cores:  # the engine crashes (OOM killer, segfault...)
        process.send_signal(signal.SIGKILL)
    with pytest.raises(PartUnavailable, match="being restarted|not running"):
        for _ in range(50):  # the client notices the death on its next request
            loop.run(collect(engine, [Turn("user", "hi")]))
            time.sleep(0.2)
    deadline = time.time() + 300
    token_ids = None
    while time.time() < deadline:
        try:
            _, token_ids, _ = loop.run(collect(engine, [Turn("user", "hi")]))
            break
        except PartUnavailable:
            time.sleep(1)
    assert engine.restarts == 1
    assert token_ids == expected(reference, [Turn("user", "hi")], []).token_ids


@pytest.mark.parametrize("route", ["embeds", "mixed"])
def test_prompt_embeds_routes_equal_the_reference_too(loop, reference, route):
    other = VLLMEngine(default_model_dir() / "llm", route=route)
    loop.run(other.start(), timeout=600)
    try:
        for case in ("image+audio", "text"):
            turns = [Turn("user", "What is in it?")]
            modalities = modalities_for(reference, **CASES[case])
            _, token_ids, _ = loop.run(collect(other, turns, modalities))
            assert token_ids == expected(reference, turns, modalities).token_ids
    finally:
        loop.run(other.stop())


def test_torch_engine_streams_the_reference_answer(loop, reference):
    engine = TorchEngine(default_model_dir() / "llm")
    loop.run(engine.start())
    turns = [Turn("user", "What do you hear?")]
    modalities = modalities_for(reference, audio=make_audio_bytes(seed=9))
    text, token_ids, finished = loop.run(collect(engine, turns, modalities))
    oracle = expected(reference, turns, modalities)
    assert token_ids == oracle.token_ids
    assert text.strip() == oracle.text
    assert finished.finish_reason == ("length" if oracle.finish_reason == "length" else "stop")


def test_llm_entity_matcher_runs_on_the_served_llm(loop, engine, reference):
    from bubogpt.grounding.matching import LLMEntityMatcher, RuleEntityMatcher, build_match_prompt
    from serving.llm_engine import engine_completion

    answer = "In the image, there are two black swans swimming in the water. One of the swans has a red beak."
    entities = ["swan", "water", "beak"]
    complete = engine_completion(engine, max_new_tokens=24)
    reply = loop.run(complete(build_match_prompt(answer, entities)))
    oracle = expected(reference, [Turn("user", build_match_prompt(answer, entities))], [], max_new_tokens=24)
    assert reply == oracle.text
    matcher = LLMEntityMatcher(complete)
    got = loop.run(matcher.amatch(answer, entities))
    # the untrained nano LLM cannot follow the prompt: the strict parser rejects its reply and the
    # deterministic matcher answers instead
    assert got == RuleEntityMatcher().match(answer, entities)


def test_the_mm_route_never_loads_the_embedding_table(reference):
    """The mm route sends token ids and the slots' rows: the frontend holds no copy of the LLM's
    embedding table. What it sends is what the embeds route splices, row for row."""
    from serving.vllm_plugin import MM_MODALITY

    mm, embeds = VLLMEngine(default_model_dir() / "llm"), VLLMEngine(default_model_dir() / "llm", route="embeds")
    turns = [Turn("user", "What do you see and hear?")]
    modalities = modalities_for(reference, **CASES["image+audio"])
    sent, spliced = mm.prepare(turns, modalities, GREEDY), embeds.prepare(turns, modalities, GREEDY)
    assert sent.embeds is None and mm._embed_table is None
    prompt = mm.engine_prompt(sent)
    items = prompt["multi_modal_data"][MM_MODALITY]
    assert len(items) == len(sent.layout.slots) == 2
    table = embeds.embed_table.weight
    for k, (start, length) in enumerate(sent.layout.slots):
        assert torch.equal(items[k], spliced.embeds[start : start + length])
        prompt["prompt_token_ids"][start : start + length] = sent.layout.token_ids[start : start + length]
    text_rows = [i for i, is_text in enumerate(sent.layout.is_text) if is_text]
    assert torch.equal(spliced.embeds[text_rows], table[torch.tensor(prompt["prompt_token_ids"])[text_rows]])
