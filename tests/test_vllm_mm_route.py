"""The "mm" injection route (serving/vllm_plugin.py): vLLM's multimodal path fed precomputed
embeddings, compared token for token with the PyTorch reference.

AsyncLLM always runs its EngineCore in a subprocess, and on CPU vLLM spawns it: the child only
knows `BuboLlamaForCausalLM` through the `vllm.general_plugins` entry point. Until that entry point
is in the installed metadata, this module puts a minimal dist-info declaring it on the path of
this process and its children.
"""

import asyncio
import os
import sys
import uuid
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from bubogpt.defaults import default_model_dir
from bubogpt.prompt import STOP_STRING, PromptLayout, Turn, build_prompt, layout_prompt, splice_embeddings
from conftest import MEDIA_CASES, make_audio_bytes, make_image_bytes, reference_answer
from serving.vllm_plugin import DEFAULT_PLACEHOLDER_ID, mm_engine_kwargs, mm_engine_prompt, register

pytest.importorskip("vllm")

MAX_NEW = 24
PLUGIN_VALUE = "serving.vllm_plugin:register"


def _plugin_entry_point_installed() -> bool:
    return any(ep.value == PLUGIN_VALUE for ep in entry_points(group="vllm.general_plugins"))


@pytest.fixture(scope="module")
def plugin_on_path(tmp_path_factory):
    """Make the entry point visible to subprocesses (no-op once pyproject declares it)."""
    saved_env, saved_path = os.environ.get("PYTHONPATH"), list(sys.path)
    if not _plugin_entry_point_installed():
        root = tmp_path_factory.mktemp("vllm_plugin_shim")
        info = root / "bubogpt_vllm_plugin_shim-0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bubogpt-vllm-plugin-shim\nVersion: 0.0\n")
        (info / "entry_points.txt").write_text(f"[vllm.general_plugins]\nbubogpt_shim = {PLUGIN_VALUE}\n")
        repo = str(Path(__file__).resolve().parents[1])
        sys.path.insert(0, str(root))  # spawned multiprocessing children inherit sys.path
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), repo, saved_env) if p)
        assert _plugin_entry_point_installed()
    yield
    sys.path[:] = saved_path
    if saved_env is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved_env


@pytest.fixture(scope="module")
def engine(loop, plugin_on_path):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    register()  # this process (the frontend runs the multimodal processor)
    llm_dir = str(default_model_dir() / "llm")
    args = AsyncEngineArgs(
        model=llm_dir,
        tokenizer=llm_dir,
        dtype="float32",
        max_model_len=2048,
        enable_prefix_caching=True,
        max_num_seqs=16,
        seed=0,
        disable_log_stats=True,
        **mm_engine_kwargs(),
    )

    async def start():
        return AsyncLLM.from_engine_args(args)

    async def stop():
        engine.shutdown()

    engine = loop.run(start(), timeout=600)
    yield engine
    loop.run(stop())


def layout_for(reference, turns, modalities) -> PromptLayout:
    prompt = build_prompt(turns, modalities)
    fill = reference.tokenizer.pad_token_id or 0
    return layout_prompt(reference.tokenizer, prompt, reference.config.vision_qformer.num_queries, fill_id=fill)


async def run_prompt(engine, prompt, max_new_tokens=MAX_NEW):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=[STOP_STRING])
    final = None
    async for output in engine.generate(prompt, params, uuid.uuid4().hex):
        final = output
    return final


def embeds_for(reference, image=None, audio=None) -> dict[str, torch.Tensor]:
    rows = {}
    if image is not None:
        rows["image"] = reference.embed_image(image)
    if audio is not None:
        rows["audio"] = reference.embed_audio(audio)
    return rows


def generate(loop, engine, reference, turns, rows: dict[str, torch.Tensor], max_new_tokens=MAX_NEW):
    modalities = list(rows)
    layout = layout_for(reference, turns, modalities)
    prompt = mm_engine_prompt(layout, [rows[m] for m in modalities], DEFAULT_PLACEHOLDER_ID)
    return layout, loop.run(run_prompt(engine, prompt, max_new_tokens))


def expected(reference, turns, rows, max_new_tokens=MAX_NEW):
    return reference_answer(reference, turns, rows.get("image"), rows.get("audio"), max_new_tokens)


CASES = MEDIA_CASES


@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_tokens_equal_the_reference(loop, engine, reference, case):
    turns = [Turn("user", "What is in it?")]
    rows = embeds_for(reference, **CASES[case])
    layout, output = generate(loop, engine, reference, turns, rows)
    oracle = expected(reference, turns, rows)
    assert list(output.outputs[0].token_ids) == oracle.token_ids
    assert len(output.prompt_token_ids) == len(layout) == oracle.prompt_tokens


def test_audio_before_image_binds_by_prompt_order(loop, engine, reference):
    # the slots are filled in prompt order, whatever the modality names
    turns = [Turn("user", "Which came first?")]
    image, audio = reference.embed_image(make_image_bytes(seed=6)), reference.embed_audio(make_audio_bytes(seed=6))
    layout = layout_for(reference, turns, ["audio", "image"])
    output = loop.run(run_prompt(engine, mm_engine_prompt(layout, [audio, image])))
    with torch.inference_mode():
        embeds = splice_embeddings(layout, [audio, image], reference.llm.get_input_embeddings())
    oracle = reference.generate_from_embeds(embeds, max_new_tokens=MAX_NEW)
    assert list(output.outputs[0].token_ids) == oracle.token_ids


def test_prefix_cache_is_keyed_by_the_embedding_content(loop, engine, reference):
    rows = embeds_for(reference, image=make_image_bytes(seed=5))
    # long enough for a full KV block (128 tokens on CPU) past the image slot
    turns = [Turn("user", "Describe the image in every detail: " + "colours, shapes, positions and sizes, " * 16)]
    layout, first = generate(loop, engine, reference, turns, rows)
    slot_start, slot_len = layout.slots[0]
    assert len(layout) > 2 * 128
    oracle = expected(reference, turns, rows).token_ids
    assert list(first.outputs[0].token_ids) == oracle

    # the same content in a fresh tensor: the cache identity is the content hash, not the object
    _, again = generate(loop, engine, reference, turns, {"image": rows["image"].clone()})
    assert again.num_cached_tokens >= slot_start + slot_len
    assert list(again.outputs[0].token_ids) == oracle

    other = {"image": rows["image"] + 0.5}  # same token ids, other embeddings: no hit past the slot start
    _, third = generate(loop, engine, reference, turns, other)
    assert third.num_cached_tokens <= slot_start
    assert list(third.outputs[0].token_ids) == expected(reference, turns, other).token_ids


def test_wrong_hidden_size_is_rejected_and_the_engine_keeps_serving(loop, engine, reference):
    turns = [Turn("user", "hi")]
    layout = layout_for(reference, turns, ["image"])
    bad = mm_engine_prompt(layout, [torch.zeros(32, 64)])
    with pytest.raises(Exception) as info:
        loop.run(run_prompt(engine, bad))
    # vLLM validates mm embeddings in the frontend (EngineGenerateError from the ValueError)
    assert "hidden dimension mismatch: got 64, but model expects 128" in f"{info.value} {info.value.__cause__}"
    _, output = generate(loop, engine, reference, turns, {})
    assert list(output.outputs[0].token_ids) == expected(reference, turns, {}).token_ids


def test_sixteen_concurrent_requests_all_match(loop, engine, reference):
    images = [reference.embed_image(make_image_bytes(seed=10 + i)) for i in range(4)]
    requests = []
    for i in range(16):
        turns = [Turn("user", f"Question number {i}: what do you see?")]
        rows = {"image": images[i % 4]} if i % 2 else {}
        requests.append((turns, rows))

    async def run_all():
        prompts = []
        for turns, rows in requests:
            layout = layout_for(reference, turns, list(rows))
            prompts.append(mm_engine_prompt(layout, list(rows.values())))
        return await asyncio.gather(*(run_prompt(engine, p, 16) for p in prompts))

    for (turns, rows), output in zip(requests, loop.run(run_all())):
        assert list(output.outputs[0].token_ids) == expected(reference, turns, rows, 16).token_ids


# --- mm_engine_prompt alone (no engine) ---------------------------------------------------------


def test_prompt_dict_layout(reference):
    turns = [Turn("user", "What is in it?")]
    layout = layout_for(reference, turns, ["image", "audio"])
    image, audio = torch.randn(32, 128), torch.randn(32, 128)
    prompt = mm_engine_prompt(layout, [image, audio], placeholder_id=7)
    ids = prompt["prompt_token_ids"]
    assert len(ids) == len(layout)
    for start, length in layout.slots:
        assert ids[start : start + length] == [7] * length
    assert all(ids[i] == layout.token_ids[i] for i, text in enumerate(layout.is_text) if text)
    assert list(prompt["multi_modal_data"]) == ["image"]
    sent = prompt["multi_modal_data"]["image"]
    assert len(sent) == 2 and torch.equal(sent[0], image) and torch.equal(sent[1], audio)
    with_ids = mm_engine_prompt(layout, [image, audio], placeholder_id=7, uuids=["img-sha", "aud-sha"])
    assert with_ids["multi_modal_uuids"] == {"image": ["img-sha", "aud-sha"]}
    text_only = layout_for(reference, turns, [])
    assert mm_engine_prompt(text_only, []) == {"prompt_token_ids": text_only.token_ids}


def test_prompt_dict_rejects_bad_inputs(reference):
    turns = [Turn("user", "What is in it?")]
    layout = layout_for(reference, turns, ["image"])
    with pytest.raises(ValueError, match="1 modality slots but 2"):
        mm_engine_prompt(layout, [torch.zeros(32, 128)] * 2)
    with pytest.raises(ValueError, match=r"must be \[32, hidden\], got \[31, 128\]"):
        mm_engine_prompt(layout, [torch.zeros(31, 128)])
    # a text token equal to the placeholder right before the slot would shift vLLM's match
    start, _ = layout.slots[0]
    clash = layout.token_ids[start - 1]
    with pytest.raises(ValueError, match="occurs in the text"):
        mm_engine_prompt(layout, [torch.zeros(32, 128)], placeholder_id=clash)
