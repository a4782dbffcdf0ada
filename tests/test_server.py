"""The whole stack on loopback: real Triton, real vLLM engine, real gRPC frontend (`bubo serve`)."""

import re
import threading
import time
import urllib.request

import grpc
import pytest

from bubogpt.prompt import Turn
from conftest import make_audio_bytes, make_image_bytes, reference_answer
from serving.client import chat_request, collect
from serving.proto import bubo_pb2, bubo_pb2_grpc
from serving.server import Limits


def expected(reference, turns, image=None, audio=None, max_new_tokens=16):
    return reference_answer(reference, turns, reference.embed_image(image) if image else None,
                            reference.embed_audio(audio) if audio else None, max_new_tokens)


IMAGE = make_image_bytes(seed=21, fmt="JPEG")
AUDIO = make_audio_bytes(seconds=4.0, seed=22)


def test_chat_streams_the_reference_answer(stub, reference):
    events = list(stub.Chat(chat_request("What do you see and hear?", IMAGE, AUDIO, max_new_tokens=16)))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"delta"}
    result = collect(events)
    oracle = expected(reference, [Turn("user", "What do you see and hear?")], IMAGE, AUDIO)
    assert result.token_ids == oracle.token_ids
    assert result.text.strip() == oracle.text
    done = result.done
    assert done.text == result.text
    assert done.usage.prompt_tokens == oracle.prompt_tokens
    assert done.usage.completion_tokens == len(oracle.token_ids)
    assert done.finish_reason == ("length" if oracle.finish_reason == "length" else "stop")
    t = done.timings
    assert 0 < t.first_token_ms <= t.total_ms and t.encode_ms > 0 and t.generation_ms > 0


def test_second_turn_hits_the_embedding_cache(stub, stack, reference):
    first = collect(stub.Chat(chat_request("Describe it.", IMAGE, max_new_tokens=8)))
    hits_before = stack.service.encoders.cache.stats.hits
    history = [("Describe it.", first.text.strip())]
    second = collect(stub.Chat(chat_request("And then?", IMAGE, history=history, max_new_tokens=8)))
    assert stack.service.encoders.cache.stats.hits == hits_before + 1
    turns = [Turn("user", "Describe it."), Turn("assistant", first.text.strip()), Turn("user", "And then?")]
    assert second.token_ids == expected(reference, turns, IMAGE, max_new_tokens=8).token_ids


def test_sixteen_concurrent_chats_all_get_their_own_answer(stub, reference):
    requests = [
        (f"Question {i}?", make_image_bytes(seed=30 + i) if i % 3 != 1 else b"", make_audio_bytes(seconds=2.0, seed=50 + i) if i % 3 else b"")
        for i in range(16)
    ]
    results = [None] * len(requests)

    def run(i):
        text, image, audio = requests[i]
        results[i] = collect(stub.Chat(chat_request(text, image, audio, max_new_tokens=8)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    for (text, image, audio), result in zip(requests, results):
        assert result.token_ids == expected(reference, [Turn("user", text)], image or None, audio or None, max_new_tokens=8).token_ids


BAD_REQUESTS = {
    "no turns": (bubo_pb2.ChatRequest(), "turns: at least one user turn"),
    "role": (bubo_pb2.ChatRequest(turns=[bubo_pb2.Turn(text="hi")]), r"turns\[0\].role"),
    "last turn": (
        bubo_pb2.ChatRequest(turns=[bubo_pb2.Turn(role=bubo_pb2.ROLE_USER, text="a"), bubo_pb2.Turn(role=bubo_pb2.ROLE_ASSISTANT, text="b")]),
        "turns: the last turn must be the user's",
    ),
    "reserved": (chat_request("a ### b"), r"turns\[0\].text: contains the reserved sequence"),
    "temperature": (bubo_pb2.ChatRequest(turns=[bubo_pb2.Turn(role=1, text="hi")], sampling=bubo_pb2.Sampling(temperature=-1)), "sampling.temperature"),
    "max tokens": (chat_request("hi", max_new_tokens=100000), "sampling.max_new_tokens"),
    "min over max tokens": (bubo_pb2.ChatRequest(turns=[bubo_pb2.Turn(role=1, text="hi")],
                                                 sampling=bubo_pb2.Sampling(max_new_tokens=8, min_new_tokens=9)),
                            r"sampling.min_new_tokens: must be in \[0, max_new_tokens = 8\], got 9"),
    "corrupt image": (chat_request("hi", image=b"\x89PNG\r\n\x1a\n garbage"), "image: image could not be decoded"),
    "truncated image": (chat_request("hi", image=make_image_bytes(fmt="PNG")[:400]), "image: image could not be decoded"),
    "corrupt audio": (chat_request("hi", audio=b"RIFF\x00\x00\x00\x00WAVEjunk"), "audio: "),
    "ground without image": (chat_request("hi", ground=True), "ground: grounding needs an image"),
    "too long": (chat_request("word " * 3000), "turns: the prompt takes"),
    "huge image": (chat_request("hi", image=b"\xff" * (Limits().max_image_bytes + 1)), "image: .* bytes, the limit is"),
    "empty text": (chat_request("   "), r"turns\[0\].text: empty"),
    "huge audio": (chat_request("hi", audio=b"\x00" * (Limits().max_audio_bytes + 1)), "audio: .* bytes, the limit is"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_invalid_argument_naming_the_field(stub, reference, case):
    request, message = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Chat(request))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    import re

    assert re.search(message, info.value.details()), info.value.details()
    # the server is still up and answers correctly
    result = collect(stub.Chat(chat_request("hi", max_new_tokens=4)))
    assert result.token_ids == expected(reference, [Turn("user", "hi")], max_new_tokens=4).token_ids


def _wait_idle(stack, timeout=30.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if stack.engine.num_unfinished == 0 and stack.service.active_streams == 0:
            return True
        time.sleep(0.1)
    return False


def test_cancelled_stream_aborts_its_generation(stub, stack):
    call = stub.Chat(chat_request("Tell me everything.", max_new_tokens=1000))
    first = next(call)
    assert first.WhichOneof("event") == "delta"
    call.cancel()
    assert _wait_idle(stack)


def test_streams_beyond_the_limit_get_resource_exhausted(stub, stack):
    limits = stack.service.limits
    stack.service.limits = Limits(max_concurrent_streams=1)
    try:
        call = stub.Chat(chat_request("Tell me everything.", max_new_tokens=1000))
        next(call)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Chat(chat_request("hi", max_new_tokens=2)))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "concurrent streams" in info.value.details()
        call.cancel()
    finally:
        stack.service.limits = limits
    assert _wait_idle(stack)


def test_deadline_exceeded(stub, stack, reference):
    limits = stack.service.limits
    stack.service.limits = Limits(request_timeout_s=0.05)
    try:
        # fresh media (no embedding-cache hit): embedding alone outlasts the 50 ms, however short the answer
        image, audio = make_image_bytes(320, 240, seed=173), make_audio_bytes(seconds=3.0, seed=173)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Chat(chat_request("Tell me everything.", image=image, audio=audio, max_new_tokens=1000)))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "longer than" in info.value.details()
    finally:
        stack.service.limits = limits
    assert _wait_idle(stack)
    result = collect(stub.Chat(chat_request("hi", max_new_tokens=4)))
    assert result.token_ids == expected(reference, [Turn("user", "hi")], max_new_tokens=4).token_ids


def test_interactive_chat_keeps_the_conversation(stack, reference, capsys):
    from serving.client import interactive_chat

    assert interactive_chat(f"127.0.0.1:{stack.port}", None, None, None, False, 6, 0.0, lines=["Hello there.", "", "And then?", "/quit", "ignored"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("assistant: ") == 2
    first = reference.generate("Hello there.", max_new_tokens=6)
    second = reference.generate([Turn("user", "Hello there."), Turn("assistant", first.text), Turn("user", "And then?")], max_new_tokens=6)
    assert reference.tokenizer.decode(second.token_ids, skip_special_tokens=True).split("###")[0].strip() in printed


def test_bubo_chat_prints_the_answer_and_writes_an_overlay(stack, reference, tmp_path, capsys):
    from PIL import Image as PILImage

    from serving.client import main_chat

    image_path, out = tmp_path / "picture.jpg", tmp_path / "overlay.png"
    image_path.write_bytes(IMAGE)
    assert main_chat(f"127.0.0.1:{stack.port}", "What is in the picture?", str(image_path), None, str(out), None, 8, 0.0) == 0
    captured = capsys.readouterr()
    oracle = reference.generate("What is in the picture?", image=IMAGE, max_new_tokens=8)
    assert re.sub(r"\[\d+\]", "", captured.out).strip() == oracle.text  # the answer, with a [n] where each entity arrived
    assert "generated tokens" in captured.err and "overlay written to" in captured.err
    assert PILImage.open(out).size[0] == PILImage.open(image_path).size[0]


def test_health_reflection_and_metrics(stack, stub):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{stack.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="bubo.v1.Bubo"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = {s.name for r in responses for s in r.list_services_response.service}
        assert {"bubo.v1.Bubo", "grpc.health.v1.Health"} <= services
    text = urllib.request.urlopen(f"http://127.0.0.1:{stack.options.metrics_port}/metrics", timeout=10).read().decode()
    assert 'bubo_requests_total{code="OK",method="Chat"}' in text
    assert 'bubo_requests_total{code="INVALID_ARGUMENT",method="Chat"}' in text
    assert 'bubo_embedding_cache_total{modality="image",result="hit"}' in text


@pytest.fixture(scope="module")
def grounding_reference():
    from bubogpt.defaults import default_model_dir
    from bubogpt.grounding.pipeline import load_grounding

    return load_grounding(default_model_dir())


def _picture(data):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def test_ground_returns_the_pipelines_entities_matched_to_the_text(stub, grounding_reference):
    from bubogpt.grounding.rle import decode

    for seed in range(6):  # find an image whose entities include a one-word label
        data = make_image_bytes(seed=seed)
        reference = grounding_reference(_picture(data))
        single = [e for e in reference.entities if "," not in e.label and " " not in e.label]
        if single:
            break
    assert single, "no single-word entity label in six images"
    target = single[0]
    text = f"In the picture I can see the {target.label} clearly."
    response = stub.Ground(bubo_pb2.GroundRequest(image=data, text=text))
    assert list(response.tags) == reference.tags
    assert response.entities
    for entity in response.entities:
        assert text[entity.start : entity.end] == entity.phrase
        assert entity.label == target.label
        want = reference.entities[entity.index]
        assert want.label == target.label
        mask = decode({"size": [entity.mask.height, entity.mask.width], "counts": entity.mask.counts})
        iou = (mask & want.mask_array()).sum() / max((mask | want.mask_array()).sum(), 1)
        assert iou > 0.999
        assert abs(entity.box.x0 - want.box_xyxy[0]) < 1e-2 and abs(entity.box.y1 - want.box_xyxy[3]) < 1e-2
    # without text: every grounded entity comes back
    everything = stub.Ground(bubo_pb2.GroundRequest(image=data))
    assert [e.label for e in everything.entities] == [e.label for e in reference.entities]


def test_chat_with_grounding_streams_entities_after_the_answer(stub, grounding_reference):
    from bubogpt.grounding.matching import RuleEntityMatcher

    events = list(stub.Chat(chat_request("What is in the picture?", IMAGE, ground=True, max_new_tokens=12)))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "done"
    first_entity = kinds.index("entity") if "entity" in kinds else len(kinds) - 1
    assert all(kind == "delta" for kind in kinds[:first_entity])
    result = collect(events)
    assert result.done.timings.grounding_ms > 0
    reference = grounding_reference(_picture(IMAGE))
    expected = RuleEntityMatcher().match(result.text, [e.label for e in reference.entities])
    assert [(e.phrase, e.start, e.end, e.label, e.index) for e in result.entities] == [
        (m.phrase, m.start, m.end, reference.entities[m.entity_index].label, m.entity_index) for m in expected
    ]


def test_ground_rejects_a_corrupt_image(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.Ground(bubo_pb2.GroundRequest(image=b"not an image"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("image:")


def test_entities_go_out_while_the_answer_is_written(stub):
    """Grounding finished before (its result is cached after a first ask): each entity event comes
    right after its phrase is written, between the deltas, with the span of the final text; the set
    equals what the complete-answer matcher finds."""
    from bubogpt.grounding.matching import RuleEntityMatcher
    from training.world import derive_seed
    from training.world.scene import make_scene

    question = "Describe the picture in detail."
    interleaved = 0
    for i in range(16):
        image = make_scene(derive_seed("incremental", "image", i)).jpeg()
        labels = [e.label for e in stub.Ground(bubo_pb2.GroundRequest(image=image), timeout=120).entities]
        events = list(stub.Chat(chat_request(question, image, ground=True, max_new_tokens=96), timeout=120))
        kinds = [e.WhichOneof("event") for e in events]
        result = collect(events)
        want = RuleEntityMatcher().match(result.text, labels)
        assert [(e.phrase, e.start, e.end, e.label) for e in sorted(result.entities, key=lambda e: e.start)] == \
            [(m.phrase, m.start, m.end, m.label) for m in want]
        written = ""
        for event in events:  # each entity's phrase was already written, where the final text has it
            if event.WhichOneof("event") == "delta":
                written += event.delta.text
            elif event.WhichOneof("event") == "entity":
                assert written[event.entity.start : event.entity.end] == result.text[event.entity.start : event.entity.end] == event.entity.phrase
        timings = result.done.entity_timings
        assert len(timings) == len(result.entities)
        last_delta = max(k for k, event in enumerate(events) if event.WhichOneof("event") == "delta" and event.delta.text)
        early = [k for k, kind in enumerate(kinds) if kind == "entity" and k < last_delta]
        assert sum(t.before_answer_end for t in timings) == len(early)
        interleaved += bool(early)
        if interleaved >= 2:
            break
    assert interleaved >= 2, "no answer got an entity event before its last delta"


def test_the_phrase_to_mask_benchmark_reads_what_the_server_sent(loop, stack):
    """`bubo bench --suite entities`, one short pass: the client's and the server's account agree."""
    from benchmarks.entity_stream import EntitySettings, markdown, pictures, run_pass, summarize

    images = pictures(EntitySettings(images=2))
    for _ in range(2):  # the second pass finds the grounding cached: entities go out as phrases are written
        answers, wall = loop.run(run_pass(f"127.0.0.1:{stack.port}", images, 1, 64), timeout=300)
    summary = summarize(answers, wall)
    assert summary["entities"] == sum(len(a.entities) for a in answers) == sum(len(a.server_ms) for a in answers)
    assert summary["before_answer_end"] == sum(b for a in answers for b in a.before_end)
    for answer in answers:
        for (start, end, _), client_ms, server_ms in zip(answer.entities, answer.client_ms, answer.server_ms):
            assert 0 <= server_ms and 0 <= client_ms and end <= len(answer.text)
    result = {"settings": {"images": 2, "max_new_tokens": 64}, "same": {"answers": 2, "same_text": 2, "same_entities_where_same_text": 2},
              "servers": {name: {"passes": {"grounded": summary}} for name in ("incremental", "after the answer")}}
    assert "| incremental | grounded |" in markdown(result)


# -- the error table, TLS and the token ---------------------------------------------------------------


def test_every_serving_error_has_a_status_and_the_unexpected_become_internal():
    import inspect

    from serving import errors

    kinds = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.ServingError) and c is not errors.ServingError]
    assert len(kinds) >= 8
    for kind in kinds:
        exc = kind("triton", "x") if "part" in inspect.signature(kind.__init__).parameters else kind("x")
        code, http, message = errors.status_of(exc, "rid")
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.OK) and 400 <= http < 600 and message == "x"
    code, http, message = errors.status_of(KeyError("boom"), "abc123")
    assert code == grpc.StatusCode.INTERNAL and http == 500 and "abc123" in message and "KeyError" in message


def test_an_unexpected_failure_is_internal_with_the_request_id_and_the_server_stays_up(stub, stack, reference):
    class BrokenMatcher:
        async def amatch(self, text, labels):
            raise RuntimeError("matcher bug")

    matcher, stack.service.matcher = stack.service.matcher, BrokenMatcher()
    try:
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Chat(chat_request("What is in the picture?", IMAGE, ground=True, max_new_tokens=4)))
    finally:
        stack.service.matcher = matcher
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert re.search(r"internal error \(RuntimeError\); request id [0-9a-f]{32} in the server log", info.value.details())
    result = collect(stub.Chat(chat_request("hi", max_new_tokens=4)))
    assert result.token_ids == expected(reference, [Turn("user", "hi")], max_new_tokens=4).token_ids


def self_signed(tmp_path):
    """A certificate for 127.0.0.1 / localhost and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_and_the_token_guard_every_rpc_but_health(loop, stack, reference, tmp_path, capsys, monkeypatch):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from serving.client import Endpoint, main_chat
    from serving.server import start_server

    cert, key = self_signed(tmp_path)
    server = loop.run(start_server(stack.service, 0, tls=(cert.read_bytes(), key.read_bytes()), api_key="s3cret"))
    address = f"127.0.0.1:{server.bound_port}"
    want = expected(reference, [Turn("user", "hi")], max_new_tokens=4).token_ids
    try:
        with grpc.insecure_channel(address) as plain:  # plaintext to a TLS port: no connection
            with pytest.raises(grpc.RpcError) as info:
                list(bubo_pb2_grpc.BuboStub(plain).Chat(chat_request("hi", max_new_tokens=4), timeout=10))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        for key_given in (None, "wrong"):
            with Endpoint(address, tls_ca=str(cert), api_key=key_given).channel() as channel:
                stub = bubo_pb2_grpc.BuboStub(channel)
                with pytest.raises(grpc.RpcError) as info:
                    list(stub.Chat(chat_request("hi", max_new_tokens=4), timeout=30))
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in info.value.details()
                with pytest.raises(grpc.RpcError) as info:
                    stub.Ground(bubo_pb2.GroundRequest(image=IMAGE), timeout=30)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.RpcError) as info:
                    list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30))
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
                assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
        with Endpoint(address, tls_ca=str(cert), api_key="s3cret").channel() as channel:
            assert collect(bubo_pb2_grpc.BuboStub(channel).Chat(chat_request("hi", max_new_tokens=4), timeout=60)).token_ids == want
        # `bubo chat` takes the token from the environment when no --api-key is given
        monkeypatch.setenv("BUBO_API_KEY", "s3cret")
        assert main_chat(Endpoint(address, tls_ca=str(cert)), "hi", None, None, None, False, 4, 0.0) == 0
        assert capsys.readouterr().out.strip() == reference.tokenizer.decode(want, skip_special_tokens=True).split("###")[0].strip()
        monkeypatch.delenv("BUBO_API_KEY")
        assert main_chat(Endpoint(address, tls_ca=str(cert)), "hi", None, None, None, False, 4, 0.0) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
    finally:
        loop.run(server.stop(0))


def test_graceful_shutdown_finishes_in_flight_streams(loop, stack, reference):
    """A second gRPC server on the same service is drained while a stream runs through it; the service is
    given back to the other tests afterwards (the SIGTERM drain of `bubo serve`: tests/test_reliability.py)."""
    from serving.server import start_server, stop_server

    server = loop.run(start_server(stack.service, 0))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.bound_port}")
    drained_stub = bubo_pb2_grpc.BuboStub(channel)
    results = {}
    streaming = threading.Event()

    def long_chat():
        events = []
        for event in drained_stub.Chat(chat_request("Tell me a story.", max_new_tokens=64)):
            events.append(event)
            streaming.set()
        results["chat"] = collect(events)

    thread = threading.Thread(target=long_chat)
    thread.start()
    try:
        assert streaming.wait(60)  # the stream is under way when the stop begins
        loop.run(stop_server(server, grace_s=60), timeout=300)
        thread.join(60)
        finished = results["chat"]
        oracle = expected(reference, [Turn("user", "Tell me a story.")], max_new_tokens=64)
        assert finished.token_ids == oracle.token_ids  # the whole answer arrived, not a cut stream
        assert finished.done.usage.completion_tokens == len(oracle.token_ids)
        with pytest.raises(grpc.RpcError):
            list(drained_stub.Chat(chat_request("hi", max_new_tokens=2), timeout=10))
    finally:
        channel.close()
        stack.service.draining = False
        loop.run(stack.server.health.refresh())
