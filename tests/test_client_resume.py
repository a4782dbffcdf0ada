"""Surviving lost parts, unit by unit. The client (serving/client.py): resumed streams repeat nothing and
invent nothing; several frontends become one gRPC target. The remote LLM tier's server choice
(serving/remote_llm.py): least in flight, dead ones last. Triton errors (serving/triton_client.py): the
client is blamed only when the error names its input."""

from __future__ import annotations

import grpc
import pytest

from serving.client import ResumeMismatch, chat_events, chat_request, collect, grpc_target
from serving.proto import bubo_pb2


class Cut(grpc.RpcError):
    def __init__(self, code=grpc.StatusCode.UNAVAILABLE):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return "the frontend went away"


def delta(text, ids):
    return bubo_pb2.ChatEvent(delta=bubo_pb2.TextDelta(text=text, token_ids=ids))


def entity(start, end, index):
    return bubo_pb2.ChatEvent(entity=bubo_pb2.Entity(phrase="a cat", start=start, end=end, index=index, label="cat"))


DONE = bubo_pb2.ChatEvent(done=bubo_pb2.Done(text="A cat sits.", finish_reason="stop"))


class FakeStub:
    """Each Chat call plays the next script: a list of events, ending in an exception or not."""

    def __init__(self, *scripts):
        self.scripts = list(scripts)
        self.calls = 0

    def Chat(self, request, timeout=None):  # noqa: N802 - the gRPC method name
        script = self.scripts[self.calls]
        self.calls += 1

        def events():
            for item in script:
                if isinstance(item, Exception):
                    raise item
                yield item

        return events()


def test_a_cut_stream_resumes_without_repeating_what_was_delivered():
    # the second stream cuts its deltas elsewhere: the overlap is dropped inside a delta, not by whole deltas
    first = [delta("A ", [1]), delta("ca", [2]), entity(2, 5, 0), Cut()]
    second = [delta("A cat", [1, 2, 3]), entity(2, 5, 0), delta(" sits.", [4, 5]), DONE]
    stub = FakeStub(first, second)
    result = collect(chat_events(stub, chat_request("hi")))
    assert stub.calls == 2
    assert result.text == "A cat sits." and result.token_ids == [1, 2, 3, 4, 5]
    assert [(e.start, e.end) for e in result.entities] == [(2, 5)]
    assert result.done.finish_reason == "stop"


def test_a_resumed_stream_that_differs_is_refused():
    first = [delta("A ", [1]), Cut()]
    second = [delta("The dog", [7, 8]), DONE]
    with pytest.raises(ResumeMismatch):
        collect(chat_events(FakeStub(first, second), chat_request("hi")))


def test_a_resumed_answer_shorter_than_what_was_delivered_is_refused():
    first = [delta("A cat", [1, 2]), Cut()]
    second = [delta("A", [1]), DONE]
    with pytest.raises(ResumeMismatch, match="shorter"):
        collect(chat_events(FakeStub(first, second), chat_request("hi")))


def test_a_cut_after_done_is_not_answered_again():
    stub = FakeStub([delta("A cat sits.", [1, 2, 3]), DONE, Cut()], [delta("A cat sits.", [1, 2, 3]), DONE])
    result = collect(chat_events(stub, chat_request("hi")))
    assert stub.calls == 1 and result.text == "A cat sits."


def test_what_cannot_be_resumed_is_raised():
    # sampled without a seed: another answer would come back
    with pytest.raises(grpc.RpcError):
        collect(chat_events(FakeStub([delta("A", [1]), Cut()]), chat_request("hi", temperature=0.7)))
    # not UNAVAILABLE: the request itself is wrong
    with pytest.raises(grpc.RpcError):
        collect(chat_events(FakeStub([delta("A", [1]), Cut(grpc.StatusCode.INVALID_ARGUMENT)]), chat_request("hi")))
    # failed before anything arrived: gRPC's own retry policy handles that, not the resume
    stub = FakeStub([Cut()], [DONE])
    with pytest.raises(grpc.RpcError):
        collect(chat_events(stub, chat_request("hi")))
    assert stub.calls == 1
    # a seeded sample is reproducible, so it resumes
    stub = FakeStub([delta("A", [1]), Cut()], [delta("A b", [1, 2]), DONE])
    assert collect(chat_events(stub, chat_request("hi", temperature=0.7, seed=3))).text == "A b"
    # at most max_resumes times
    stub = FakeStub(*[[delta("A", [1]), Cut()]] * 5)
    with pytest.raises(grpc.RpcError):
        collect(chat_events(stub, chat_request("hi"), max_resumes=3))
    assert stub.calls == 4


def test_several_frontends_become_one_round_robin_target():
    assert grpc_target("127.0.0.1:50051") == "127.0.0.1:50051"
    assert grpc_target("127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert grpc_target("dns:///frontend:50051") == "dns:///frontend:50051"
    with pytest.raises(ValueError, match="not HOST:PORT"):
        grpc_target("127.0.0.1:1,nonsense")


def test_the_remote_tier_sends_to_the_least_loaded_server_and_tries_dead_ones_last():
    from serving.remote_llm import LLMServer, RemoteLLMEngine

    engine = RemoteLLMEngine.__new__(RemoteLLMEngine)  # only the choice is under test: no model directory
    engine.servers = [LLMServer("http://a"), LLMServer("http://b"), LLMServer("http://c")]
    engine._next = 0
    a, b, c = engine.servers
    for server in engine.servers:
        server.checked = True  # each served our model when probed
    a.in_flight, b.in_flight, c.in_flight = 3, 1, 2
    assert [s.url for s in engine._order()] == ["http://b", "http://c", "http://a"]
    b.mark_down("refused", retry_after_s=60)
    assert [s.url for s in engine._order()] == ["http://c", "http://a", "http://b"]
    # equals take turns
    a.in_flight = c.in_flight = 0
    firsts = {engine._order()[0].url for _ in range(4)}
    assert firsts == {"http://a", "http://c"}
    b.mark_up()
    assert b.up and b.reason == ""
    # a down server never checked (or found serving another model) is never tried
    c.checked = False
    c.mark_down("serves another model", retry_after_s=60)
    assert "http://c" not in [s.url for s in engine._order()]


def test_triton_errors_are_blamed_on_the_request_only_when_they_name_its_input():
    from serving.errors import InvalidArgument, PartUnavailable
    from serving.triton_client import classify

    class Error:
        def __init__(self, message):
            self.text = message

        def status(self):
            return "StatusCode.INVALID_ARGUMENT"

        def message(self):
            return self.text

    fields = {"IMAGE": "image"}
    # our python model refusing the request's bytes: the client's fault, named by field
    refused = classify(Error("in ensemble 'grounding', IMAGE: image could not be decoded"), "grounding", fields)
    assert isinstance(refused, InvalidArgument) and str(refused).startswith("image: ")
    # an empty tensor between two of our models after a stub restart (seen in the soak): Triton's, transient
    empty = "in ensemble 'grounding', input byte size mismatch for input 'PIXELS' for model 'tagger'. Expected 49152, got 0"
    assert isinstance(classify(Error(empty), "grounding", fields), PartUnavailable)
