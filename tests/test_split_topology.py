"""The tiers as separate processes (issue 16): `bubo triton`, two `bubo llm-server`s (stock vLLM), two
`bubo serve --triton-url --llm-url` frontends, on loopback, knowing each other only by address.

Bound to the single-process stack (the session's `stub`): the same greedy tokens, text and masks for
image, audio, both, text and a second turn, through each frontend; a cancel aborts the request in
vLLM; under load, losing a frontend and an LLM server loses no request the client library resumes;
health says the truth when a whole tier is gone.
"""

from __future__ import annotations

import re
import signal
import threading
import time
import urllib.request

import grpc
import pytest

from benchmarks.split_topology import SplitTopology
from conftest import make_audio_bytes, make_image_bytes
from serving.client import Endpoint, chat_events, chat_request, collect
from serving.proto import bubo_pb2_grpc

IMAGE = make_image_bytes(seed=61)
AUDIO = make_audio_bytes(seconds=3.0, seed=62)
CASES = {
    "image (grounded)": dict(text="What is in the picture?", image=IMAGE, ground=True),
    "audio": dict(text="What do you hear?", audio=AUDIO),
    "image+audio": dict(text="What do you see and hear?", image=IMAGE, audio=AUDIO),
    "text": dict(text="Tell me about dogs."),
}


@pytest.fixture(scope="module")
def split(serve_cache, tmp_path_factory):
    topology = SplitTopology(serve_cache, tmp_path_factory.mktemp("split-logs"), llm_servers=2, frontends=2,
                             frontend_args=("--drain-grace-secs", "5"))
    topology.start(timeout_s=600)
    yield topology
    topology.stop()


def request_for(case: str, history=(), max_new_tokens: int = 24):
    kwargs = dict(CASES[case])
    return chat_request(kwargs.pop("text"), history=list(history), max_new_tokens=max_new_tokens, **kwargs)


def answer_key(result):
    """What must be equal between the topologies: tokens, text, and each entity with its mask."""
    entities = [(e.phrase, e.start, e.end, e.label, round(e.score, 4), (round(e.box.x0, 2), round(e.box.y0, 2), round(e.box.x1, 2),
                 round(e.box.y1, 2)), e.mask.counts) for e in result.entities]
    return result.token_ids, result.text, sorted(entities)


@pytest.fixture(scope="module")
def expected(stub):
    """The single-process stack's answers (the oracle of this module), the second turn included."""
    answers = {case: collect(stub.Chat(request_for(case))) for case in CASES}
    history = [(CASES["image (grounded)"]["text"], answers["image (grounded)"].text.strip())]
    second = chat_request("And what else?", image=IMAGE, history=history, max_new_tokens=24)
    answers["second turn"] = collect(stub.Chat(second))
    return answers, second


def vllm_counts(split) -> dict[str, float]:
    """Summed over the LLM servers: requests running, and finished by reason (vLLM's own /metrics)."""
    counts: dict[str, float] = {}
    for port in split.llm_ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            continue
        for name, labels, value in re.findall(r"^(vllm:\w+)\{([^}]*)\} ([0-9.e+-]+)$", text, re.M):
            if name == "vllm:num_requests_running":
                counts["running"] = counts.get("running", 0.0) + float(value)
            elif name == "vllm:generation_tokens_total":
                counts["generated"] = counts.get("generated", 0.0) + float(value)
            elif name == "vllm:request_success_total":
                reason = re.search(r'finished_reason="(\w+)"', labels).group(1)
                counts[reason] = counts.get(reason, 0.0) + float(value)
        counts[f"served:{port}"] = sum(float(v) for n, _, v in re.findall(r"^(vllm:request_success_total)\{([^}]*)\} ([0-9.e+-]+)$",
                                                                         text, re.M))
    return counts


def test_each_frontend_gives_the_single_process_answers(split, expected):
    answers, second = expected
    before = vllm_counts(split)
    for frontend in split.frontends:
        stub = bubo_pb2_grpc.BuboStub(frontend.channel())
        for case in CASES:
            got = collect(stub.Chat(request_for(case), timeout=120))
            assert answer_key(got) == answer_key(answers[case]), f"{case} through {frontend.address}"
            if case == "image (grounded)":
                assert got.entities, "the grounded case must have entities to compare"
        got = collect(stub.Chat(second, timeout=120))
        assert answer_key(got) == answer_key(answers["second turn"]), f"second turn through {frontend.address}"
    after = vllm_counts(split)
    # both LLM servers took part (least-loaded, round robin among equals)
    for port in split.llm_ports:
        assert after.get(f"served:{port}", 0.0) > before.get(f"served:{port}", 0.0), f"LLM server :{port} served nothing"


def test_a_cancelled_stream_is_aborted_in_vllm(split):
    stub = bubo_pb2_grpc.BuboStub(split.frontends[0].channel())
    prompt = chat_request("a a a a a a a a", max_new_tokens=1000)  # greedy: the built-in model writes 61 tokens
    full = collect(stub.Chat(prompt, timeout=120))
    assert full.done.usage.completion_tokens > 40

    def cancel_once() -> tuple[dict, dict]:
        before = vllm_counts(split)
        call = stub.Chat(prompt, timeout=120)
        assert next(call).WhichOneof("event") == "delta"
        call.cancel()
        deadline = time.monotonic() + 20
        while vllm_counts(split).get("running", 0.0) and time.monotonic() < deadline:
            time.sleep(0.2)
        return before, vllm_counts(split)

    # vLLM aborted it: it did not finish (stop/length; vLLM 0.32 counts a client abort under no
    # finished_reason) and did not write the whole answer. On a slow machine the answer can be done
    # before the cancel lands, so up to three tries; every try must leave nothing running.
    for _ in range(3):
        before, after = cancel_once()
        assert after.get("running", 0.0) == 0, after
        finished = (after.get("stop", 0), after.get("length", 0)) != (before.get("stop", 0), before.get("length", 0))
        if not finished and after["generated"] - before["generated"] < full.done.usage.completion_tokens:
            return
    pytest.fail(f"three cancels, none aborted in vLLM: {before} -> {after}")


def test_losing_a_frontend_and_an_llm_server_under_load_loses_no_request(split, expected):
    answers, _ = expected
    cases = list(CASES)
    done: list[tuple[str, float]] = []
    errors: list[str] = []
    stop = threading.Event()

    def client(worker: int) -> None:
        with Endpoint(split.addresses).channel() as channel:
            stub = bubo_pb2_grpc.BuboStub(channel)
            n = worker
            while not stop.is_set():
                case = cases[n % len(cases)]
                n += 1
                try:
                    got = collect(chat_events(stub, request_for(case), timeout=120))
                except Exception as exc:  # noqa: BLE001 - every failure is reported
                    errors.append(f"{case}: {exc!r}"[:300])
                    continue
                if answer_key(got) != answer_key(answers[case]):
                    errors.append(f"{case}: a different answer {got.text!r}")
                done.append((case, time.monotonic()))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(6)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while len(done) < 6 and not errors and time.monotonic() < deadline:  # load is flowing through both
            time.sleep(0.2)
        assert len(done) >= 6 and not errors, (len(done), errors[:3])
        killed_at = time.monotonic()
        split.frontends[0].stop(signal.SIGKILL)  # the frontend process, mid-stream
        split.llms[0].kill()  # vLLM's server and its engine core
        deadline = time.monotonic() + 120
        while len([1 for _, at in done if at > killed_at + 2.0]) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(180)
    assert not errors, errors[:5]
    after = [c for c, at in done if at > killed_at + 2.0]
    assert len(after) >= 6, f"the survivors served only {len(after)} requests in 120 s after the kills"
    survivor = split.frontends[1]
    assert survivor.health("") == "SERVING" and survivor.health("llm") == "SERVING"


def test_health_says_which_tier_is_gone(split):
    """Last in the module: it takes the remaining tiers down."""
    survivor = split.frontends[1]
    stub = bubo_pb2_grpc.BuboStub(survivor.channel())
    for llm in split.llms:
        if llm.process.poll() is None:
            llm.kill()
    survivor.wait_health("NOT_SERVING", "llm", timeout_s=30)
    assert survivor.health("") == "NOT_SERVING" and survivor.health("triton") == "SERVING"
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Chat(chat_request("hi", max_new_tokens=4), timeout=30))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "llm" in info.value.details().lower(), info.value.details()
    split.triton.kill()
    survivor.wait_health("NOT_SERVING", "triton", timeout_s=30)
