"""The OpenAI-compatible HTTP API, with the official `openai` package against the real stack: the same
answers as gRPC (greedy), streaming and not, image, audio, both, multi-turn, grounded entities, and
OpenAI-style errors."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import openai
import pytest

from conftest import make_audio_bytes, make_image_bytes, part_down
from serving.client import chat_request, collect
from training.world import derive_seed
from training.world.scene import make_scene

IMAGE = make_scene(derive_seed("http-api", "image", 0)).jpeg()
AUDIO = make_audio_bytes(seconds=3.0, seed=31)


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{stack.http_port}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(stack):
    return f"bubogpt-{stack.config.name}"


def image_part(data: bytes = IMAGE, mime: str = "image/jpeg") -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


def audio_part(data: bytes = AUDIO) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}


def user(text: str, *parts) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text}, *parts]} if parts else {"role": "user", "content": text}


def grpc_answer(stub, text, image=b"", audio=b"", history=(), ground=False, max_new_tokens=16):
    return collect(stub.Chat(chat_request(text, image, audio, history=list(history), ground=ground, max_new_tokens=max_new_tokens),
                             timeout=120))


CASES = {
    "image": (lambda: [user("What is in the picture?", image_part())], dict(image=IMAGE)),
    "audio": (lambda: [user("What do you hear?", audio_part())], dict(audio=AUDIO)),
    "image+audio": (lambda: [user("What do you see and hear?", image_part(), audio_part())], dict(image=IMAGE, audio=AUDIO)),
    "text": (lambda: [user("Say hello.")], dict()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_answers_equal_the_grpc_answers_streaming_and_not(client, model, stub, case):
    messages, media = CASES[case]
    want = grpc_answer(stub, messages()[0]["content"][0]["text"] if media else "Say hello.", **media,
                       ground=False, max_new_tokens=16)
    response = client.chat.completions.create(model=model, messages=messages(), temperature=0, max_tokens=16,
                                              extra_body={"bubo": {"ground": False}})
    assert response.choices[0].message.content == want.text
    assert response.usage.completion_tokens == want.done.usage.completion_tokens
    assert response.usage.prompt_tokens == want.done.usage.prompt_tokens
    assert response.choices[0].finish_reason == ("length" if want.done.finish_reason == "length" else "stop")
    stream = client.chat.completions.create(model=model, messages=messages(), temperature=0, max_tokens=16, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"bubo": {"ground": False}})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert chunks[-1].usage.completion_tokens == want.done.usage.completion_tokens


def test_multi_turn_equals_grpc(client, model, stub):
    first = grpc_answer(stub, "Describe the picture.", IMAGE, max_new_tokens=12)
    want = grpc_answer(stub, "And the colours?", IMAGE, history=[("Describe the picture.", first.text.strip())], max_new_tokens=12)
    messages = [{"role": "system", "content": "You are helpful."},  # accepted, not used: the prompt's system text is fixed
                user("Describe the picture.", image_part()),
                {"role": "assistant", "content": first.text.strip()},
                user("And the colours?")]
    response = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=12,
                                              extra_body={"bubo": {"ground": False}})
    assert response.choices[0].message.content == want.text


def test_grounded_entities_come_in_the_extension_field(client, model, stub):
    want = grpc_answer(stub, "What objects are in the image?", IMAGE, ground=True, max_new_tokens=24)
    response = client.chat.completions.create(model=model, messages=[user("What objects are in the image?", image_part())],
                                              temperature=0, max_tokens=24)
    entities = response.model_extra["bubo"]["entities"]
    assert [(e["phrase"], e["start"], e["end"], e["label"], e["mask"]["counts"]) for e in entities] == \
        [(e.phrase, e.start, e.end, e.label, e.mask.counts) for e in want.entities]
    text = response.choices[0].message.content
    assert all(text[e["start"]:e["end"]] == e["phrase"] for e in entities)
    stream = client.chat.completions.create(model=model, messages=[user("What objects are in the image?", image_part())],
                                            temperature=0, max_tokens=24, stream=True)
    chunks = list(stream)
    one_by_one = [c.model_extra["bubo"]["entity"] for c in chunks if (c.model_extra or {}).get("bubo", {}).get("entity")]
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1].model_extra["bubo"]
    assert one_by_one == final["entities"] == entities
    assert final["timings"]["total_ms"] > 0
    # when each entity went out, in the order they were sent (Done.entity_timings)
    assert [(t["index"], t["start"]) for t in final["timings"]["entities"]] == [(e["index"], e["start"]) for e in entities]


def test_models_and_health(stack, client, model):
    assert [m.id for m in client.models.list().data] == [model]
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.http_port}/health", timeout=10) as response:
        body = json.loads(response.read())
    assert response.status == 200 and body["status"] == "ok" and body["parts"]["triton"]["up"]


def test_min_tokens_is_vllms_extension(client, model):
    """`min_tokens` (vLLM's OpenAI extension) reaches the engine: with min = max every answer is exactly that long."""
    for text in ("hi", "What is in it?"):
        completion = client.chat.completions.create(model=model, messages=[user(text)], temperature=0, max_tokens=40,
                                                    extra_body={"min_tokens": 40, "bubo": {"ground": False}})
        assert completion.usage.completion_tokens == 40 and completion.choices[0].finish_reason == "length"


@pytest.mark.parametrize("case", ["remote url", "bad base64", "bad temperature", "two images", "tools", "no user", "unknown part",
                                  "min over max"])
def test_bad_requests_are_400_naming_the_field(client, model, case):
    messages, extra, param = {
        "remote url": ([user("hi", {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}})], {},
                       "messages[0].content[1].image_url.url"),
        "bad base64": ([user("hi", {"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}})], {},
                       "messages[0].content[1].input_audio.data"),
        "bad temperature": ([user("hi")], {"temperature": 9.0}, "temperature"),
        "two images": ([user("hi", image_part(), image_part(make_image_bytes(seed=3), "image/png"))], {}, "messages[0].content[2]"),
        "tools": ([user("hi")], {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        "no user": ([{"role": "system", "content": "x"}], {}, "messages"),
        "unknown part": ([user("hi", {"type": "video_url", "video_url": {"url": "x"}})], {}, "messages[0].content[1]"),
        "min over max": ([user("hi")], {"extra_body": {"min_tokens": 9}}, "min_tokens"),
    }[case]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=messages, max_tokens=4, **extra)
    error = info.value.body
    assert error["param"] == param and error["message"].startswith(param), error


def test_a_corrupt_image_is_400_in_openai_terms(client, model):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=[user("hi", image_part(b"\x89PNG\r\n\x1a\n garbage"))], max_tokens=4)
    assert info.value.body["param"] == "messages[0].content[1].image_url"
    assert "could not be decoded" in info.value.body["message"]


def test_another_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[user("hi")], max_tokens=4)
    assert info.value.body["code"] == "model_not_found" and "bubogpt-" in info.value.body["message"]


def test_a_body_over_the_limit_is_413(stack, model):
    from serving.http_api import MAX_BODY_BYTES

    body = json.dumps({"model": model, "messages": [user("x" * (MAX_BODY_BYTES + 10))]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{stack.http_port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == 413 and json.loads(info.value.read())["error"]["code"] == "request_too_large"


def test_at_the_stream_limit_429_and_with_a_part_down_503(loop, stack, client, model, stub):
    from serving.server import Limits

    limits = stack.service.limits
    stack.service.limits = Limits(max_concurrent_streams=1)
    try:
        call = stub.Chat(chat_request("Tell me everything.", max_new_tokens=1000, temperature=2.0, seed=1), timeout=120)
        next(call)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model=model, messages=[user("hi")], max_tokens=4)
        assert "concurrent streams" in info.value.body["message"]
        call.cancel()
    finally:
        stack.service.limits = limits
    with part_down(loop, stack, "triton"):
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model=model, messages=[user("hi", image_part())], max_tokens=4)
        assert info.value.status_code == 503 and "Triton" in info.value.body["message"]
        assert info.value.body["code"] == "triton_unavailable"
        text_only = client.chat.completions.create(model=model, messages=[user("Say hi.")], max_tokens=4, temperature=0)
        assert text_only.choices[0].message.content is not None  # what does not need Triton still works


def test_the_token_guards_the_api_but_not_health(loop, stack, model):
    from serving.http_api import start_http

    runner = loop.run(start_http(stack.service, 0, model_id=model, api_key="s3cret"))
    base = f"http://127.0.0.1:{runner.bound_port}"
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0, timeout=120)
        assert good.chat.completions.create(model=model, messages=[user("hi")], max_tokens=2, temperature=0).choices
        with urllib.request.urlopen(f"{base}/health", timeout=10) as response:
            assert response.status == 200
    finally:
        loop.run(runner.cleanup())


def test_a_client_that_disconnects_aborts_its_generation(stack, model):
    import http.client
    import time

    connection = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=60)
    body = json.dumps({"model": model, "messages": [user("Tell me everything.")], "max_tokens": 1000, "temperature": 2.0,
                       "seed": 3, "stream": True})
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    connection.close()  # the client goes away mid-stream
    deadline = time.time() + 30
    while time.time() < deadline and (stack.engine.num_unfinished or stack.service.active_streams):
        time.sleep(0.1)
    assert stack.engine.num_unfinished == 0 and stack.service.active_streams == 0
